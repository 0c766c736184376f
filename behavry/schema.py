"""OpenAPI generation (drf-spectacular) with Behavry's conventions applied to every operation.

Every operation documents the error responses it can produce, in the one error shape, without
each view repeating them: 401 and 429 everywhere, 403 for operations behind a role, 400 where a
body or query parameters are validated, 404 on paths with an id, 409 on writes, 415 where a
body is parsed. Operations without an explicit summary get one from the action and the model.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

_ERROR_DESCRIPTIONS = {
    "400": "Invalid input. `fields` maps each bad field to its messages.",
    "401": "No credentials, or an invalid, expired or revoked API key.",
    "403": "The key's role does not allow this operation.",
    "404": "No such object.",
    "409": "The object is not in a state that allows this (for example already decided or revoked).",
    "415": "The body is not JSON.",
    "429": "Too many requests for this key; retry after the `Retry-After` header's seconds.",
}

_DEFAULT_SUMMARIES = {
    "list": "List {plural}",
    "retrieve": "Get one {singular}",
    "create": "Create a {singular}",
    "update": "Replace a {singular}",
    "partial_update": "Change a {singular}",
    "destroy": "Delete a {singular}",
}


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable error code, e.g. `invalid`, `not_found`, `conflict`.")
    message = serializers.CharField(help_text="What went wrong, for people.")
    # The metaclass moves declared fields off the class, so this does not shadow Serializer.fields.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Field name (dotted for nested fields) to its messages; empty unless code is `invalid`.",
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class BehavrySchema(AutoSchema):
    def get_summary(self):
        summary = super().get_summary()
        if summary:
            return summary
        action = getattr(self.view, "action", None)
        model = getattr(getattr(self.view, "queryset", None), "model", None)
        if action in _DEFAULT_SUMMARIES and model is not None:
            return _DEFAULT_SUMMARIES[action].format(
                singular=model._meta.verbose_name, plural=model._meta.verbose_name_plural
            )
        return None

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = _ERROR_DESCRIPTIONS[code]
                responses[code] = response
        return responses

    def _error_codes(self) -> list[str]:
        codes = ["401", "429"]
        if any(not getattr(p, "public", False) for p in self.view.get_permissions()):
            codes.append("403")
        has_body = self.method in ("POST", "PUT", "PATCH")
        if has_body or self._get_filter_parameters() or self.get_override_parameters():
            codes.append("400")
        if has_body:
            codes.append("415")
        if "{" in self.path:
            codes.append("404")
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.append("409")
        return sorted(codes)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "bhv_key_…",
            "description": "An API key from `manage.py create_api_key` or `POST /api/v1/api-keys/`.",
        }
