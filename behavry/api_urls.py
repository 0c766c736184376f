"""REST API routes under /api/v1/, the OpenAPI schema and its two readers (served from static files)."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

import behavry.schema  # noqa: F401  (registers the API key security scheme with drf-spectacular)
from accounts.api import ApiKeyViewSet
from agents.api import AgentViewSet, RoleViewSet
from alerts.api import AlertViewSet
from audit.api import AuditEventViewSet
from behavry import views
from behavry.api import api_not_found
from escalations.api import EscalationViewSet
from policies.api import ExceptionViewSet, PolicyViewSet
from proxy.api import ServerViewSet, ToolViewSet

router = SimpleRouter()
router.register("servers", ServerViewSet, basename="server")
router.register("tools", ToolViewSet, basename="tool")
router.register("agents", AgentViewSet, basename="agent")
router.register("roles", RoleViewSet, basename="role")
router.register("policies", PolicyViewSet, basename="policy")
router.register("exceptions", ExceptionViewSet, basename="exception")
router.register("escalations", EscalationViewSet, basename="escalation")
router.register("alerts", AlertViewSet, basename="alert")
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("api-keys", ApiKeyViewSet, basename="api-key")

app_name = "api"

urlpatterns = [
    path("whoami/", views.WhoAmIView.as_view(), name="whoami"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    *router.urls,
    # Last: ids that do not match a route's pattern, and unknown paths, get a JSON 404 too.
    re_path(r"^[\s\S]*$", api_not_found),  # [\s\S]: a %0A in the path must not escape to HTML
]
