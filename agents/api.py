"""REST API for agents, their roles and their tokens. Reads need viewer; every write needs admin."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.permissions import ViewerReadsAdminWrites
from agents.models import Agent, AgentStatus, AgentToken, RiskTier, Role
from agents.services import (
    agent_create,
    agent_delete,
    agent_reactivate,
    agent_suspend,
    agent_token_issue,
    agent_token_revoke,
    agent_update,
    role_create,
    role_update,
)
from behavry.api import request_actor, validated
from behavry.errors import InvalidInput, NotFound


class AgentSerializer(serializers.ModelSerializer):
    roles: serializers.SlugRelatedField[Role] = serializers.SlugRelatedField(
        slug_field="name", many=True, read_only=True
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "description",
            "owner",
            "status",
            "roles",
            "risk_tier",
            "risk_score",
            "max_hold_seconds",
            "suspended_at",
            "suspended_reason",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class AgentWriteSerializer(serializers.Serializer):
    """Body of POST, PUT and PATCH. Role names must exist (see `roles/`)."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    owner = serializers.CharField(required=False, allow_blank=True, max_length=200)
    roles = serializers.ListField(
        child=serializers.SlugField(max_length=64), required=False, max_length=100, help_text="Role names."
    )
    max_hold_seconds = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=86400,
        help_text="Longest time one call of this agent may be held for a human decision.",
    )


class SuspendSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class AgentTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentToken
        fields = ["id", "label", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class AgentTokenIssueSerializer(serializers.Serializer):
    label = serializers.CharField(  # type: ignore[assignment]  # a declared field, not Field.label
        required=False, allow_blank=True, max_length=100, default=""
    )


class AgentTokenIssuedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    # Declared fields leave the class body (metaclass), so these do not shadow Field.label/help_text.
    label = serializers.CharField()  # type: ignore[assignment]
    prefix = serializers.CharField()
    token = serializers.CharField(help_text="The raw token. It is shown only in this response.")
    created_at = serializers.DateTimeField()


class AgentFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=AgentStatus.choices)
    risk_tier = django_filters.ChoiceFilter(choices=RiskTier.choices)
    role = django_filters.CharFilter(field_name="roles__name", help_text="Agents holding this role.")
    search = django_filters.CharFilter(method="filter_search", help_text="Substring of name or owner.")

    class Meta:
        model = Agent
        fields = ["status", "risk_tier", "role", "search"]

    def filter_search(self, queryset, name, value):
        from django.db.models import Q

        return queryset.filter(Q(name__icontains=value) | Q(owner__icontains=value))


@extend_schema_view(
    list=extend_schema(summary="List agents"),
    retrieve=extend_schema(summary="Get one agent"),
    create=extend_schema(summary="Register an agent", request=AgentWriteSerializer),
    update=extend_schema(summary="Replace an agent's fields and roles", request=AgentWriteSerializer),
    partial_update=extend_schema(summary="Change some of an agent's fields", request=AgentWriteSerializer),
    destroy=extend_schema(summary="Delete a suspended agent", responses={204: None}),
)
class AgentViewSet(viewsets.ModelViewSet):
    """Agents: the identities that call tools through `/mcp/`. Status changes use suspend/reactivate."""

    queryset = Agent.objects.prefetch_related("roles")
    lookup_value_regex = "[0-9]+"
    serializer_class = AgentSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_class = AgentFilter

    def create(self, request, *args, **kwargs):
        data = validated(AgentWriteSerializer, request)
        agent = agent_create(by=request_actor(request), **data)
        return Response(AgentSerializer(agent).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        data = validated(AgentWriteSerializer, request, partial=partial)
        agent = agent_update(agent=self.get_object(), by=request_actor(request), **data)
        return Response(AgentSerializer(Agent.objects.prefetch_related("roles").get(pk=agent.pk)).data)

    def destroy(self, request, *args, **kwargs):
        agent_delete(agent=self.get_object(), by=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Suspend an agent",
        description="Ends all its sessions and cancels its pending escalations at once. "
        "Every proxy process refuses its next request.",
        request=SuspendSerializer,
        responses=AgentSerializer,
    )
    @action(detail=True, methods=["post"])
    def suspend(self, request, pk=None):
        data = validated(SuspendSerializer, request)
        agent = agent_suspend(agent=self.get_object(), by=request_actor(request), reason=data["reason"])
        return Response(AgentSerializer(agent).data)

    @extend_schema(summary="Reactivate a suspended agent", request=None, responses=AgentSerializer)
    @action(detail=True, methods=["post"])
    def reactivate(self, request, pk=None):
        agent = agent_reactivate(agent=self.get_object(), by=request_actor(request))
        return Response(AgentSerializer(agent).data)

    @extend_schema(
        methods=["GET"], summary="List an agent's tokens", request=None, responses=AgentTokenSerializer(many=True)
    )
    @extend_schema(
        methods=["POST"],
        summary="Issue a token for an agent",
        description="The raw token is in this response only; Behavry keeps its SHA-256 digest.",
        request=AgentTokenIssueSerializer,
        responses={201: AgentTokenIssuedSerializer},
    )
    @action(detail=True, methods=["get", "post"], filter_backends=[], pagination_class=None)
    def tokens(self, request, pk=None):
        agent = self.get_object()
        if request.method == "GET":
            return Response(AgentTokenSerializer(agent.tokens.all(), many=True).data)
        data = validated(AgentTokenIssueSerializer, request)
        token, raw = agent_token_issue(agent=agent, by=request_actor(request), label=data["label"])
        body = {**AgentTokenSerializer(token).data, "token": raw}
        return Response(AgentTokenIssuedSerializer(body).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Revoke one of an agent's tokens",
        description="Takes effect on the agent's next request in every proxy process.",
        request=None,
        responses={200: AgentTokenSerializer},
    )
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"tokens/(?P<token_id>[0-9]+)",
        url_name="token-revoke",
        filter_backends=[],
    )
    def revoke_token(self, request, pk=None, token_id=None):
        token = AgentToken.objects.filter(agent=self.get_object(), pk=int(token_id)).first()
        if token is None:
            raise NotFound("This agent has no such token.")
        token = agent_token_revoke(token=token, by=request_actor(request))
        return Response(AgentTokenSerializer(token).data)


class RoleSerializer(serializers.ModelSerializer):
    agent_count = serializers.IntegerField(source="agents.count", read_only=True)

    class Meta:
        model = Role
        fields = ["id", "name", "description", "agent_count", "created_at"]
        read_only_fields = ["id", "agent_count", "created_at"]
        extra_kwargs = {"description": {"required": False, "max_length": 10_000}}
        validators: list = []


class RoleWriteSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)


@extend_schema_view(
    list=extend_schema(summary="List agent roles"),
    retrieve=extend_schema(summary="Get one agent role"),
    create=extend_schema(summary="Create an agent role", request=RoleWriteSerializer),
    update=extend_schema(summary="Rename or describe an agent role", request=RoleWriteSerializer),
    partial_update=extend_schema(summary="Change an agent role", request=RoleWriteSerializer),
)
class RoleViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Agent roles (groups of agents that policies can name)."""

    queryset = Role.objects.all()
    lookup_value_regex = "[0-9]+"
    serializer_class = RoleSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["name"]

    def create(self, request, *args, **kwargs):
        data = validated(RoleWriteSerializer, request)
        if Role.objects.filter(name=data["name"]).exists():
            raise InvalidInput(f"A role named {data['name']!r} exists.", fields={"name": ["Already taken."]})
        role = role_create(by=request_actor(request), **data)
        return Response(RoleSerializer(role).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        data = validated(RoleWriteSerializer, request, partial=partial)
        role = role_update(role=self.get_object(), by=request_actor(request), **data)
        return Response(RoleSerializer(role).data)
