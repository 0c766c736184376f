from __future__ import annotations

from django.contrib import admin
from django.db.models import Case, Value, When

from accounts.roles import PersonRole
from behavry.admin_site import RoleAdmin
from escalations.models import Escalation, EscalationStatus
from escalations.notify import notify_batch
from escalations.services import escalation_approve, escalation_deny


@admin.register(Escalation)
class EscalationAdmin(RoleAdmin):
    """Held calls. Approvers may approve or deny pending ones in bulk; nothing else is editable."""

    change_role = PersonRole.APPROVER
    list_display = ["id", "status", "agent", "server", "tool", "action", "risk_tier", "created_at", "deadline"]
    list_filter = ["status", "risk_tier", "action"]
    list_select_related = ["agent"]
    search_fields = ["agent__name", "tool", "server", "resource", "policy_id", "request_id"]
    readonly_fields = [f.name for f in Escalation._meta.fields]
    date_hierarchy = "created_at"
    actions = ["approve_escalations", "approve_with_exception", "deny_escalations"]

    def has_add_permission(self, request) -> bool:
        return False  # escalations are created by the proxy holding a call

    def get_queryset(self, request):
        # Pending first: that is the approver's queue.
        pending_first = Case(When(status=EscalationStatus.PENDING, then=Value(0)), default=Value(1))
        return (
            super().get_queryset(request).annotate(pending_first=pending_first).order_by("pending_first", "-created_at")
        )

    def _decide(self, request, queryset, decide, verb: str) -> None:
        skipped = queryset.exclude(status=EscalationStatus.PENDING).count()
        # One batch: held connections are released together after the transaction commits.
        with notify_batch():
            self.run_bulk(request, queryset.filter(status=EscalationStatus.PENDING), decide, verb)
        if skipped:
            self.message_user(request, f"Skipped {skipped} already decided.", level="warning")

    @admin.action(description="Approve selected pending escalations", permissions=["change"])
    def approve_escalations(self, request, queryset):
        by = self.actor(request)
        self._decide(
            request,
            queryset,
            lambda e: escalation_approve(escalation=e, by=by, note="bulk approve from admin"),
            "Approved",
        )

    @admin.action(description="Approve selected and allow these exact calls from now on", permissions=["change"])
    def approve_with_exception(self, request, queryset):
        by = self.actor(request)
        self._decide(
            request,
            queryset,
            lambda e: escalation_approve(
                escalation=e, by=by, note="bulk approve with exception from admin", create_exception=True
            ),
            "Approved",
        )

    @admin.action(description="Deny selected pending escalations", permissions=["change"])
    def deny_escalations(self, request, queryset):
        by = self.actor(request)
        self._decide(
            request, queryset, lambda e: escalation_deny(escalation=e, by=by, note="bulk deny from admin"), "Denied"
        )
