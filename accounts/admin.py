from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from behavry.admin_site import RoleAdmin


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "role", "expires_at"]


@admin.register(ApiKey)
class ApiKeyAdmin(RoleAdmin):
    list_display = ["name", "prefix", "role", "created_by", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "created_by"]
    readonly_fields = ["name", "role", "prefix", "created_by", "created_at", "expires_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        key, raw = api_key_create(name=obj.name, role=obj.role, expires_at=obj.expires_at, by=self.actor(request))
        obj.pk = key.pk
        obj._state.adding = False
        messages.warning(request, f"New API key {key.name}: {raw} - copy it now, it is not shown again.")

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        self.run_bulk(request, queryset, lambda k: api_key_revoke(key=k, by=self.actor(request)), "Revoked")
