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


def adopt(obj, saved) -> None:
    """Make the admin's unsaved `obj` the row a service saved, so history and messages name it."""
    for field in saved._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


class RoleInline:
    """Inline mixin: read-only rows shown to anyone with a role (inlines ignore RoleAdmin's checks)."""

    view_role = PersonRole.VIEWER

    def has_view_permission(self, request, obj=None) -> bool:
        return has_role(request.user, self.view_role)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


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


class SecretIssuingAdmin(RoleAdmin):
    """Admin for rows that hold a secret shown once (agent tokens, API keys).

    The add page uses `add_form` and a service that returns the raw secret, which is shown in a
    message exactly once. Existing rows are read-only: revocation is a bulk action.
    """

    add_form: type | None = None

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def has_change_permission(self, request, obj=None) -> bool:
        # The changelist (obj None) needs change permission for actions; a row is view-only.
        return obj is None and super().has_change_permission(request, obj)

    def show_secret_once(self, request, what: str, raw: str) -> None:
        messages.warning(request, f"{what}: {raw} - copy it now, it is not shown again.")
