"""The API's one error shape: `{"error": {"code", "message", "fields"}}` with a 4xx status.

DRF's own exceptions (validation, auth, throttling, 404) and Behavry's DomainErrors all pass through
here, so integrations parse one shape. Anything else is a bug and becomes a 500 from Django.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from behavry.actors import Actor, actor_for
from behavry.errors import DomainError


def _flatten(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(value, dict):
                for sub, messages in _flatten(value).items():
                    out[f"{key}.{sub}"] = messages
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                for index, item in enumerate(value):
                    for sub, messages in _flatten(item).items():
                        out[f"{key}[{index}].{sub}"] = messages
            else:
                out[str(key)] = [str(m) for m in (value if isinstance(value, list) else [value])]
        return out
    return {}


# The largest id a 64-bit primary key holds; larger numbers in a body are a 400, not a driver error.
MAX_ID = 2**63 - 1


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, SuspiciousOperation):  # e.g. too many fields; Django itself would answer 400
        return Response(error_body("bad_request", str(exc) or "Malformed request."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = (
            _flatten(exc.detail) if isinstance(exc.detail, dict) else {"non_field_errors": [str(d) for d in exc.detail]}
        )
        response.data = error_body("invalid", "The request has invalid fields.", fields)
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    detail = getattr(exc, "detail", "")
    code = detail.code if hasattr(detail, "code") else getattr(exc, "default_code", "error")
    response.data = error_body(str(code), str(detail))
    return response


def request_actor(request) -> Actor:
    """The Actor behind an API request: the API key if one authenticated it, else the person."""
    return actor_for(request.auth if request.auth is not None else request.user)


def request_body(request) -> dict[str, Any]:
    """The JSON body as a dict; a list, string or number body is a 400, not a crash further down."""
    if not isinstance(request.data, dict):
        raise exceptions.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
    return dict(request.data)


def validated(serializer_class, request, **kwargs) -> dict[str, Any]:
    """Validate the request body with `serializer_class`; field errors become the one 400 shape."""
    serializer = serializer_class(data=request_body(request), **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@csrf_exempt  # a POST to an unknown path is a 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    """Any /api/ path no route matches: the one error shape, not Django's HTML 404 page."""
    from django.http import JsonResponse

    return JsonResponse(error_body("not_found", "Not found."), status=404)
