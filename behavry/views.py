from __future__ import annotations

import time

from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.roles import PersonRole, role_of
from behavry.actors import actor_for
from behavry.tasks import HEARTBEAT_CACHE_KEY

CELERY_HEARTBEAT_MAX_AGE = 120  # beat sends one every 30 s; four missed beats is "not ready"


@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Dependencies are /readyz's job."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: database, channel layer and a recent Celery heartbeat."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready, and we report which
        checks["database"] = f"error: {type(exc).__name__}"
    beat = cache.get(HEARTBEAT_CACHE_KEY)
    checks["celery"] = "ok" if beat and time.time() - beat < CELERY_HEARTBEAT_MAX_AGE else "no recent heartbeat"
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        body = {
            "error": {"code": "server_error", "message": "Internal server error; it has been logged.", "fields": {}}
        }
        return JsonResponse(body, status=500)
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "overview.html", {"role": role_of(request.user)})


class _ActorSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["person", "api_key"])
    id = serializers.CharField()
    name = serializers.CharField()


class WhoAmISerializer(serializers.Serializer):
    actor = _ActorSerializer()
    role = serializers.ChoiceField(choices=PersonRole.choices)


class WhoAmIView(APIView):
    """Who the API thinks you are; integrations use it to check a key."""

    @extend_schema(
        summary="Who am I", description="The key (or person) and role the API sees.", responses=WhoAmISerializer
    )
    def get(self, request):
        principal = request.auth if request.auth is not None else request.user
        return Response({"actor": actor_for(principal).as_dict(), "role": role_of(principal)})
