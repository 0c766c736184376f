from __future__ import annotations

from django.contrib import admin

from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from behavry.admin_filters import ServerSlugFilter, recent_filter, values_filter
from behavry.admin_site import RoleAdmin


class ReadOnlyAdmin(RoleAdmin):
    """The audit trail is read-only everywhere, including here: no add, change or delete."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "timestamp",
        "kind",
        "agent_name",
        "server",
        "tool",
        "action",
        "decision",
        "policy_id",
        "actor",
    ]
    # No date_hierarchy and no plain CharField filters: each runs SELECT DISTINCT over the whole trail.
    list_filter = [
        "kind",
        values_filter("decision", "decision", [("allow", "allow"), ("deny", "deny"), ("escalate", "escalate")]),
        ServerSlugFilter,
        recent_filter("timestamp"),
    ]
    search_fields = ["agent_name", "tool", "policy_id", "request_id", "actor", "resource"]
    show_full_result_count = False  # COUNT(*) on a million-row table on every page load is wasteful


@admin.register(AuditChainHead)
class AuditChainHeadAdmin(ReadOnlyAdmin):
    list_display = ["chain", "seq", "last_hash", "updated_at"]
    search_fields = ["chain"]


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ["chain", "up_to_seq", "deleted", "created_at", "created_by"]
    search_fields = ["chain"]
