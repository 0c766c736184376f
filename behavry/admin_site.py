"""Django admin gated by Behavry's people roles instead of per-model Django permissions.

Viewers may browse, admins may change; approvers may also handle alerts. Every change an admin
page makes goes through the same service function the API uses (see each app's admin.py).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.apps import AdminConfig

from accounts.roles import PersonRole, has_role, role_of
from behavry.actors import Actor, actor_for
from behavry.errors import DomainError


class BehavryAdminSite(admin.AdminSite):
    site_header = "Behavry administration"
    site_title = "Behavry admin"
    index_title = "Bulk edits"

    def has_permission(self, request) -> bool:
        return request.user.is_active and role_of(request.user) is not None


class BehavryAdminConfig(AdminConfig):
    default_site = "behavry.admin_site.BehavryAdminSite"


class RoleAdmin(admin.ModelAdmin):
    """Base ModelAdmin: `view_role` may look, `change_role` may add/change and run actions."""

    view_role = PersonRole.VIEWER
    change_role = PersonRole.ADMIN
    allow_delete = False

    def has_module_permission(self, request) -> bool:
        return has_role(request.user, self.view_role)

    def has_view_permission(self, request, obj=None) -> bool:
        return has_role(request.user, self.view_role)

    def has_add_permission(self, request) -> bool:
        return has_role(request.user, self.change_role)

    def has_change_permission(self, request, obj=None) -> bool:
        return has_role(request.user, self.change_role)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self.allow_delete and has_role(request.user, self.change_role)

    @staticmethod
    def actor(request) -> Actor:
        return actor_for(request.user)

    def run_bulk(self, request, queryset, service, verb: str, **kwargs) -> None:
        """Apply `service` to each selected row, reporting what changed and what was refused."""
        done, refused = 0, []
        for obj in queryset:
            try:
                service(obj, **kwargs)
                done += 1
            except DomainError as exc:
                refused.append(exc.message)
        if done:
            self.message_user(request, f"{verb} {done} {self.model._meta.verbose_name_plural}.", messages.SUCCESS)
        for message in refused:
            self.message_user(request, message, messages.WARNING)
