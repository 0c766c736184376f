"""REST API routes under /api/v1/. Each feature issue adds its routers here."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from audit.api import AuditEventViewSet
from behavry import views
from escalations.api import EscalationViewSet
from policies.api import ExceptionViewSet, PolicyViewSet

router = SimpleRouter()
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("policies", PolicyViewSet, basename="policy")
router.register("exceptions", ExceptionViewSet, basename="exception")
router.register("escalations", EscalationViewSet, basename="escalation")

app_name = "api"

urlpatterns = [
    path("whoami/", views.WhoAmIView.as_view(), name="whoami"),
    *router.urls,
]
