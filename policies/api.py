"""REST API for policies and exceptions, plus simulate and replay."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.permissions import IsViewer, ViewerReadsAdminWrites
from agents.models import Agent, RiskTier
from behavry.api import request_actor, request_body, validated
from policies.models import Policy, PolicyEffect, PolicyException, PolicyMode
from policies.replay import policy_replay
from policies.services import exception_create, exception_revoke, policy_create, policy_delete, policy_update
from policies.simulate import policy_simulate
from proxy.models import ToolAction


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


class ConditionSerializer(serializers.Serializer):
    arg = serializers.CharField(help_text="Argument name or dotted path, e.g. `path` or `options.mode`.")
    op = serializers.ChoiceField(choices=["eq", "ne", "in", "glob", "regex", "lt", "gt"])
    value = serializers.JSONField(help_text="A list for `in`, a number for `lt`/`gt`, else a string.")


class TimeWindowSerializer(serializers.Serializer):
    days = serializers.ListField(
        child=serializers.ChoiceField(choices=["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), required=False
    )
    start = serializers.CharField(required=False, help_text="HH:MM, 24-hour.")
    end = serializers.CharField(required=False, help_text="HH:MM, 24-hour; before start means overnight.")
    timezone = serializers.CharField(required=False, help_text="IANA zone, default UTC.")


class PolicyWriteSerializer(serializers.Serializer):
    """The policy body (DESIGN §6). Validated by `policies.validation.validate_policy`; an empty list
    matches anything."""

    name = serializers.CharField(max_length=200)
    priority = serializers.IntegerField(required=False, min_value=-1_000_000, max_value=1_000_000, default=100)
    effect = serializers.ChoiceField(choices=PolicyEffect.choices)
    mode = serializers.ChoiceField(choices=PolicyMode.choices, required=False)
    enabled = serializers.BooleanField(required=False)
    agents = serializers.ListField(child=serializers.IntegerField(), required=False, help_text="Agent ids.")
    roles = serializers.ListField(child=serializers.CharField(), required=False, help_text="Agent role names.")
    servers = serializers.ListField(child=serializers.CharField(), required=False, help_text="Server slug globs.")
    tools = serializers.ListField(child=serializers.CharField(), required=False, help_text="Tool name globs.")
    actions = serializers.ListField(child=serializers.ChoiceField(choices=ToolAction.choices), required=False)
    resources = serializers.ListField(child=serializers.CharField(), required=False, help_text="Resource globs.")
    risk_tiers = serializers.ListField(child=serializers.ChoiceField(choices=RiskTier.choices), required=False)
    conditions = ConditionSerializer(many=True, required=False)
    time_window = TimeWindowSerializer(required=False, allow_null=True)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class DecisionResultSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["allow", "deny", "escalate"])
    policy_id = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    trace = serializers.ListField(child=serializers.DictField(), help_text="Each rule considered, in order.")
    shadow = serializers.ListField(child=serializers.DictField(), help_text="Shadow rules that would have matched.")
    shadow_decision = serializers.CharField(allow_null=True)
    exception_id = serializers.IntegerField(allow_null=True)
    rules_total = serializers.IntegerField()
    rules_skipped_by_index = serializers.IntegerField()
    call = serializers.DictField(help_text="The call as the engine saw it (action, resource, roles, tier).")


class ReplayResultSerializer(serializers.Serializer):
    evaluated = serializers.IntegerField()
    changed = serializers.IntegerField()
    transitions = serializers.DictField(child=serializers.IntegerField(), help_text='e.g. {"allow->deny": 3}.')
    changes = serializers.ListField(child=serializers.DictField())
    events_with_redacted_arguments = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=["replace", "add"])


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


class ReplaySerializer(serializers.Serializer):
    policies = serializers.ListField(child=serializers.DictField(), allow_empty=True, max_length=10_000)
    limit = serializers.IntegerField(min_value=1, max_value=10_000, default=500)
    mode = serializers.ChoiceField(choices=["replace", "add"], default="replace")


@extend_schema_view(
    list=extend_schema(summary="List policies"),
    retrieve=extend_schema(summary="Get one policy"),
    create=extend_schema(summary="Create a policy", request=PolicyWriteSerializer),
    update=extend_schema(summary="Replace a policy", request=PolicyWriteSerializer),
    partial_update=extend_schema(summary="Change some fields of a policy", request=PolicyWriteSerializer),
    destroy=extend_schema(summary="Delete a policy", responses={204: None}),
)
class PolicyViewSet(viewsets.ModelViewSet):
    """Policies. Writes need the admin role; reads, simulate and replay need viewer."""

    queryset = Policy.objects.all()
    lookup_value_regex = "[0-9]+"
    serializer_class = PolicySerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["effect", "mode", "enabled"]

    def create(self, request, *args, **kwargs):
        policy = policy_create(data=request_body(request), by=request_actor(request))
        return Response(PolicySerializer(policy).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        policy = policy_update(
            policy=self.get_object(), data=request_body(request), by=request_actor(request), partial=partial
        )
        return Response(PolicySerializer(policy).data)

    def destroy(self, request, *args, **kwargs):
        policy_delete(policy=self.get_object(), by=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Simulate a decision",
        description="Runs the live rule set on a hypothetical call and returns the decision with its trace.",
        request=SimulateSerializer,
        responses=DecisionResultSerializer,
    )
    @action(detail=False, methods=["post"], permission_classes=[IsViewer])
    def simulate(self, request):
        return Response(policy_simulate(**validated(SimulateSerializer, request)))

    @extend_schema(
        summary="Replay recorded calls against draft policies",
        description="Which of the last `limit` recorded decisions would change under the drafts.",
        request=ReplaySerializer,
        responses=ReplayResultSerializer,
    )
    @action(detail=False, methods=["post"], permission_classes=[IsViewer])
    def replay(self, request):
        return Response(policy_replay(**validated(ReplaySerializer, request)))


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


@extend_schema_view(
    list=extend_schema(summary="List exceptions"),
    retrieve=extend_schema(summary="Get one exception"),
    create=extend_schema(summary="Create an exception"),
    destroy=extend_schema(summary="Revoke an exception", responses={204: None}),
)
class ExceptionViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Exceptions. DELETE revokes (the row stays, for the record)."""

    queryset = PolicyException.objects.select_related("agent")
    lookup_value_regex = "[0-9]+"
    serializer_class = ExceptionSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["agent", "server", "tool"]

    def create(self, request, *args, **kwargs):
        serializer = ExceptionSerializer(data=request_body(request))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        exception = exception_create(
            agent=data["agent"],
            server=data["server"],
            tool=data["tool"],
            resource=data.get("resource", ""),
            note=data.get("note", ""),
            expires_at=data.get("expires_at"),
            by=request_actor(request),
        )
        return Response(ExceptionSerializer(exception).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        exception_revoke(exception=self.get_object(), by=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
