from __future__ import annotations

from django.contrib import admin

from accounts.roles import PersonRole
from alerts.models import Alert, AlertNote
from alerts.services import alert_acknowledge, alert_resolve
from behavry.admin_site import RoleAdmin, RoleInline


class AlertNoteInline(RoleInline, admin.TabularInline):
    model = AlertNote
    extra = 0
    fields = ("created_at", "author", "action", "text")
    readonly_fields = fields


@admin.register(Alert)
class AlertAdmin(RoleAdmin):
    change_role = PersonRole.APPROVER  # approvers handle alerts (DESIGN §7)
    list_display = ["title", "agent", "type", "severity", "status", "occurrences", "created_at", "last_seen_at"]
    list_filter = ["status", "severity", "type", "false_positive"]
    list_select_related = ["agent"]
    show_full_result_count = False
    search_fields = ["title", "agent__name", "dedup_key"]
    readonly_fields = [f.name for f in Alert._meta.fields]
    inlines = [AlertNoteInline]
    actions = ["acknowledge_alerts", "resolve_alerts", "resolve_false_positive"]

    def has_add_permission(self, request) -> bool:
        return False  # alerts are raised by detection through alert_raise

    @admin.action(description="Acknowledge selected alerts", permissions=["change"])
    def acknowledge_alerts(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda a: alert_acknowledge(alert=a, by=self.actor(request), note="bulk acknowledge from admin"),
            "Acknowledged",
        )

    @admin.action(description="Resolve selected alerts", permissions=["change"])
    def resolve_alerts(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda a: alert_resolve(alert=a, by=self.actor(request), note="bulk resolve from admin"),
            "Resolved",
        )

    @admin.action(description="Resolve selected alerts as false positives", permissions=["change"])
    def resolve_false_positive(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda a: alert_resolve(
                alert=a, by=self.actor(request), note="false positive (admin bulk)", false_positive=True
            ),
            "Resolved",
        )
