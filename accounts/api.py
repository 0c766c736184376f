"""REST API for API keys (admin only): list, issue (the raw key is returned once), revoke."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from accounts.models import ApiKey
from accounts.permissions import IsAdmin
from accounts.roles import PersonRole
from accounts.services import api_key_create, api_key_revoke
from behavry.api import request_actor, validated


class ApiKeySerializer(serializers.ModelSerializer):
    usable = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "role",
            "prefix",
            "created_at",
            "created_by",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "usable",
        ]
        read_only_fields = fields

    def get_usable(self, obj: ApiKey) -> bool:
        return obj.is_usable()


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    role = serializers.ChoiceField(choices=PersonRole.choices)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiKeyIssuedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The raw key. It is shown only in this response.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(summary="List API keys"),
    retrieve=extend_schema(summary="Get one API key"),
    create=extend_schema(
        summary="Issue an API key",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyIssuedSerializer},
        description="The raw key is in this response only; Behavry keeps its SHA-256 digest.",
    ),
    destroy=extend_schema(
        summary="Revoke an API key",
        description="The key stops working at once; the row stays for the record.",
        responses={204: None},
    ),
)
class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Keys integrations use on `/api/`. Managing them needs the admin role."""

    queryset = ApiKey.objects.all()
    lookup_value_regex = "[0-9]+"
    serializer_class = ApiKeySerializer
    permission_classes = [IsAdmin]
    filterset_fields = ["role"]

    def create(self, request, *args, **kwargs):
        data = validated(ApiKeyCreateSerializer, request)
        key, raw = api_key_create(by=request_actor(request), **data)
        key.key = raw
        return Response(ApiKeyIssuedSerializer(key).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        api_key_revoke(key=self.get_object(), by=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
