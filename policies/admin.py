from __future__ import annotations

from django.contrib import admin

from behavry.admin_filters import ServerSlugFilter
from behavry.admin_site import RoleAdmin
from policies.models import Policy, PolicyException
from policies.services import exception_revoke, policy_set_enabled


@admin.register(Policy)
class PolicyAdmin(RoleAdmin):
    """Bulk enable/disable here; rules are written through the API or console, which validate them."""

    list_display = ["slug", "name", "effect", "mode", "enabled", "priority", "updated_at", "updated_by"]
    list_filter = ["effect", "mode", "enabled"]
    search_fields = ["slug", "name", "reason"]
    readonly_fields = [f.name for f in Policy._meta.fields]
    actions = ["enable_policies", "disable_policies"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Enable selected policies", permissions=["change"])
    def enable_policies(self, request, queryset):
        self.run_bulk(
            request, queryset, lambda p: policy_set_enabled(policy=p, enabled=True, by=self.actor(request)), "Enabled"
        )

    @admin.action(description="Disable selected policies", permissions=["change"])
    def disable_policies(self, request, queryset):
        self.run_bulk(
            request, queryset, lambda p: policy_set_enabled(policy=p, enabled=False, by=self.actor(request)), "Disabled"
        )


@admin.register(PolicyException)
class PolicyExceptionAdmin(RoleAdmin):
    list_display = ["id", "agent", "server", "tool", "resource", "expires_at", "created_by", "created_at", "revoked_at"]
    list_filter = [ServerSlugFilter, ("revoked_at", admin.EmptyFieldListFilter)]
    show_full_result_count = False
    list_select_related = ["agent"]
    search_fields = ["agent__name", "server", "tool", "resource", "note"]
    readonly_fields = [f.name for f in PolicyException._meta.fields]
    actions = ["revoke_exceptions"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke selected exceptions", permissions=["change"])
    def revoke_exceptions(self, request, queryset):
        self.run_bulk(request, queryset, lambda e: exception_revoke(exception=e, by=self.actor(request)), "Revoked")
