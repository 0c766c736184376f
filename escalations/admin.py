from __future__ import annotations

from django.contrib import admin

from accounts.roles import PersonRole
from agents.models import RiskTier
from behavry.admin_filters import ServerSlugFilter, recent_filter, values_filter
from behavry.admin_site import RoleAdmin
from escalations.models import Escalation, EscalationStatus, approver_queue_order
from escalations.notify import notify_batch
from escalations.services import escalation_approve, escalation_deny
from proxy.models import ToolAction


@admin.register(Escalation)
class EscalationAdmin(RoleAdmin):
    """Held calls. Approvers may approve or deny pending ones in bulk; nothing else is editable."""

    change_role = PersonRole.APPROVER
    list_display = ["id", "status", "agent", "server", "tool", "action", "risk_tier", "created_at", "deadline"]
    list_filter = [
        "status",
        values_filter("risk_tier", "risk tier", RiskTier),
        values_filter("action", "action", ToolAction),
        ServerSlugFilter,
        recent_filter("created_at"),
    ]
    list_select_related = ["agent"]
    search_fields = ["agent__name", "tool", "server", "resource", "policy_id", "request_id"]
    readonly_fields = [f.name for f in Escalation._meta.fields]
    show_full_result_count = False
    actions = ["approve_escalations", "approve_with_exception", "deny_escalations"]

    def has_add_permission(self, request) -> bool:
        return False  # escalations are created by the proxy holding a call

    def get_ordering(self, request):
        # Pending first, newest first: the approver's queue. Set here, not in get_queryset, because
        # the changelist puts its own ordering (the model's -created_at) before a queryset's.
        return approver_queue_order()

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
