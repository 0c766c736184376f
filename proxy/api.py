"""REST API for upstream MCP servers and their tool catalog. Reads need viewer; writes need admin."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.permissions import ViewerReadsAdminWrites
from behavry.api import request_actor, validated
from proxy.catalog import upstream_url_problem
from proxy.models import Tool, ToolAction, UpstreamServer
from proxy.services import tool_update, upstream_server_create, upstream_server_delete, upstream_server_update


class ServerSerializer(serializers.ModelSerializer):
    has_credentials = serializers.BooleanField(read_only=True)
    tool_count = serializers.IntegerField(source="tools.count", read_only=True)

    class Meta:
        model = UpstreamServer
        # auth_header_value is write-only: it is Behavry's secret for the upstream.
        fields = [
            "id",
            "slug",
            "name",
            "url",
            "enabled",
            "auth_header_name",
            "has_credentials",
            "connect_timeout",
            "read_timeout",
            "era",
            "protocol_version",
            "tool_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ServerWriteSerializer(serializers.Serializer):
    slug = serializers.SlugField(max_length=64, help_text="Agents connect to `/mcp/<slug>`. Cannot be changed.")
    name = serializers.CharField(max_length=200)
    url = serializers.CharField(
        max_length=500, help_text="The upstream's Streamable HTTP endpoint, http(s)://host[:port]/path."
    )
    enabled = serializers.BooleanField(required=False)
    auth_header_name = serializers.CharField(required=False, allow_blank=True, max_length=100)
    auth_header_value = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        write_only=True,
        help_text="Behavry's credential for the upstream, sent instead of the agent's token. Never returned.",
    )
    connect_timeout = serializers.FloatField(required=False, min_value=0.1, max_value=300)
    read_timeout = serializers.FloatField(required=False, min_value=0.1, max_value=86400)

    def validate_url(self, value: str) -> str:
        problem = upstream_url_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def validate_auth_header_name(self, value: str) -> str:
        # A header name with spaces or colons would be rejected by the HTTP client at call time.
        if value and not all(c.isalnum() or c in "-_" for c in value):
            raise serializers.ValidationError("Letters, digits, '-' and '_' only.")
        return value


class ToolSerializer(serializers.ModelSerializer):
    server: serializers.SlugRelatedField[UpstreamServer] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    action = serializers.CharField(read_only=True, help_text="The effective verb class policies match on.")

    class Meta:
        model = Tool
        fields = [
            "id",
            "server",
            "name",
            "title",
            "description",
            "input_schema",
            "annotations",
            "default_action",
            "action_override",
            "action",
            "resource_argument",
            "definition_hash",
            "first_seen_at",
            "last_seen_at",
        ]
        read_only_fields = fields


class ToolWriteSerializer(serializers.Serializer):
    action_override = serializers.ChoiceField(
        choices=[("", "(none)"), *ToolAction.choices], required=False, help_text="Empty clears the override."
    )
    resource_argument = serializers.CharField(required=False, allow_blank=True, max_length=128)


@extend_schema_view(
    list=extend_schema(summary="List upstream servers"),
    retrieve=extend_schema(summary="Get one upstream server"),
    create=extend_schema(summary="Register an upstream server", request=ServerWriteSerializer),
    update=extend_schema(summary="Replace an upstream server's settings", request=ServerWriteSerializer),
    partial_update=extend_schema(summary="Change an upstream server's settings", request=ServerWriteSerializer),
    destroy=extend_schema(summary="Delete a disabled upstream server", responses={204: None}),
)
class ServerViewSet(viewsets.ModelViewSet):
    """Upstream MCP servers that agents reach through `/mcp/<slug>`."""

    queryset = UpstreamServer.objects.all()
    lookup_value_regex = "[0-9]+"
    serializer_class = ServerSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = ["enabled", "era", "slug"]

    def create(self, request, *args, **kwargs):
        data = validated(ServerWriteSerializer, request)
        server = upstream_server_create(by=request_actor(request), **data)
        return Response(ServerSerializer(server).data, status=status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        partial = kwargs.pop("partial", False)
        server = self.get_object()
        data = validated(ServerWriteSerializer, request, partial=partial)
        if data.pop("slug", server.slug) != server.slug:
            raise serializers.ValidationError({"slug": ["The slug cannot be changed; agents connect with it."]})
        server = upstream_server_update(server=server, by=request_actor(request), **data)
        return Response(ServerSerializer(server).data)

    def destroy(self, request, *args, **kwargs):
        upstream_server_delete(server=self.get_object(), by=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="List a server's tool catalog",
        description="Tools as last seen in the upstream's `tools/list`, with the verb class policies match on.",
        request=None,
        responses=ToolSerializer(many=True),
    )
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def tools(self, request, pk=None):
        server = self.get_object()
        return Response(ToolSerializer(server.tools.select_related("server"), many=True).data)


@extend_schema_view(
    list=extend_schema(summary="List tools of all servers"),
    retrieve=extend_schema(summary="Get one tool"),
    partial_update=extend_schema(summary="Correct how a tool is classified", request=ToolWriteSerializer),
)
class ToolViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The tool catalog. Rows come from upstreams' `tools/list`; admins may correct the verb class."""

    queryset = Tool.objects.select_related("server")
    lookup_value_regex = "[0-9]+"
    serializer_class = ToolSerializer
    permission_classes = [ViewerReadsAdminWrites]
    filterset_fields = {"server__slug": ["exact"], "name": ["exact"], "default_action": ["exact"]}
    http_method_names = ["get", "patch", "head", "options"]

    def partial_update(self, request, *args, **kwargs):
        data = validated(ToolWriteSerializer, request)
        tool = tool_update(tool=self.get_object(), by=request_actor(request), **data)
        return Response(ToolSerializer(tool).data)
