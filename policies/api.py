"""REST API for policies and exceptions, plus simulate and replay."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from accounts.permissions import IsViewer, ViewerReadsAdminWrites
from agents.models import Agent, RiskTier
from behavry.actors import actor_for
from policies.models import Policy, PolicyException
from policies.replay import policy_replay
from policies.services import exception_create, exception_revoke, policy_create, policy_delete, policy_update
from policies.simulate import policy_simulate


def _actor(request):
    return actor_for(request.auth if request.auth is not None else request.user)


def _body(request) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise ValidationError({"non_field_errors": ["The body must be a JSON object."]})
    return dict(request.data)


class PolicySerializer(serializers.ModelSerializer):
    policy_id = serializers.CharField(source="slug", read_only=True)

    class Meta:
        model = Policy
        fields = [
            "id",
            "policy_id",
            "name",
            "priority",
            "effect",
            "mode",
            "enabled",
            "agents",
            "roles",
            "servers",
            "tools",
            "actions",
            "resources",
            "risk_tiers",
            "conditions",
            "time_window",
            "reason",
            "created_at",
            "updated_at",
            "created_by",
            "updated_by",
        ]
        read_only_fields = fields


class PolicyViewSet(viewsets.ModelViewSet):
    """Policies. Writes need the admin role; reads, simulate and replay need viewer."""

    queryset = Policy.objects.all()
    serializer_class = PolicySerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["effect", "mode", "enabled"]

    def create(self, request, *args, **kwargs):
        policy = policy_create(data=_body(request), by=_actor(request))
        return Response(PolicySerializer(policy).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        policy = policy_update(policy=self.get_object(), data=_body(request), by=_actor(request), partial=partial)
        return Response(PolicySerializer(policy).data)

    def destroy(self, request, *args, **kwargs):
        policy_delete(policy=self.get_object(), by=_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=False, methods=["post"], permission_classes=[IsViewer])
    def simulate(self, request):
        return Response(policy_simulate(**SimulateSerializer.validated(request)))

    @action(detail=False, methods=["post"], permission_classes=[IsViewer])
    def replay(self, request):
        body = _body(request)
        serializer = ReplaySerializer(data=body)
        serializer.is_valid(raise_exception=True)
        return Response(policy_replay(**serializer.validated_data))


class SimulateSerializer(serializers.Serializer):
    agent = serializers.CharField(help_text="Agent id or name.")
    server = serializers.CharField(max_length=64)
    tool = serializers.CharField(max_length=200)
    arguments = serializers.DictField(required=False, default=dict)
    action = serializers.CharField(required=False, max_length=16)
    resource = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    risk_tier = serializers.ChoiceField(choices=RiskTier.choices, required=False)

    def validate_agent(self, value: str) -> Agent:
        value = value.strip()
        agent = Agent.objects.filter(pk=int(value)).first() if value.isascii() and value.isdigit() else None
        agent = agent or Agent.objects.filter(name=value).first()
        if agent is None:
            raise serializers.ValidationError("Unknown agent.")
        return agent

    @classmethod
    def validated(cls, request) -> dict[str, Any]:
        serializer = cls(data=_body(request))
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


class ReplaySerializer(serializers.Serializer):
    policies = serializers.ListField(child=serializers.DictField(), allow_empty=True, max_length=10_000)
    limit = serializers.IntegerField(min_value=1, max_value=10_000, default=500)
    mode = serializers.ChoiceField(choices=["replace", "add"], default="replace")


class ExceptionSerializer(serializers.ModelSerializer):
    agent = serializers.PrimaryKeyRelatedField(queryset=Agent.objects.all())
    active = serializers.SerializerMethodField()

    class Meta:
        model = PolicyException
        fields = [
            "id",
            "agent",
            "server",
            "tool",
            "resource",
            "note",
            "escalation_id",
            "expires_at",
            "created_at",
            "created_by",
            "revoked_at",
            "revoked_by",
            "active",
        ]
        read_only_fields = ["id", "escalation_id", "created_at", "created_by", "revoked_at", "revoked_by", "active"]
        extra_kwargs = {"resource": {"allow_blank": True, "required": False}, "note": {"required": False}}
        validators: list = []  # uniqueness is the service's call (409), not a 400 from the serializer

    def get_active(self, obj: PolicyException) -> bool:
        return obj.is_active(timezone.now())


class ExceptionViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Exceptions. DELETE revokes (the row stays, for the record)."""

    queryset = PolicyException.objects.select_related("agent")
    serializer_class = ExceptionSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["agent", "server", "tool"]

    def create(self, request, *args, **kwargs):
        serializer = ExceptionSerializer(data=_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        exception = exception_create(
            agent=data["agent"],
            server=data["server"],
            tool=data["tool"],
            resource=data.get("resource", ""),
            note=data.get("note", ""),
            expires_at=data.get("expires_at"),
            by=_actor(request),
        )
        return Response(ExceptionSerializer(exception).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        exception_revoke(exception=self.get_object(), by=_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
