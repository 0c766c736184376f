from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from behavry.admin_site import SecretIssuingAdmin, adopt


class ApiKeyAddForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "role", "expires_at"]

    def clean_expires_at(self):
        # Same rule as api_key_create, checked here so the form shows it instead of a 500.
        value = self.cleaned_data.get("expires_at")
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("Must be in the future.")
        return value


@admin.register(ApiKey)
class ApiKeyAdmin(SecretIssuingAdmin):
    add_form = ApiKeyAddForm
    list_display = ["name", "prefix", "role", "created_by", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "created_by"]
    readonly_fields = ["name", "role", "prefix", "created_by", "created_at", "expires_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]

    def save_model(self, request, obj, form, change):
        key, raw = api_key_create(name=obj.name, role=obj.role, expires_at=obj.expires_at, by=self.actor(request))
        adopt(obj, key)
        self.show_secret_once(request, f"New API key {key.name}", raw)

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        self.run_bulk(request, queryset, lambda k: api_key_revoke(key=k, by=self.actor(request)), "Revoked")
