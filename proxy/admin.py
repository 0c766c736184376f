from __future__ import annotations

from django import forms
from django.contrib import admin

from behavry.admin_site import RoleAdmin, adopt
from proxy.catalog import upstream_url_problem
from proxy.models import Tool, UpstreamServer
from proxy.services import SERVER_EDITABLE_FIELDS, tool_update, upstream_server_create, upstream_server_update


class UpstreamServerForm(forms.ModelForm):
    # Not forms.URLField: upstreams are often plain http on a service name without dots.
    url = forms.CharField(max_length=500, help_text="Streamable HTTP endpoint, e.g. http://files-mcp:8080/mcp")
    auth_header_value = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Behavry's credential for this upstream. Leave empty to keep the current value.",
    )

    class Meta:
        model = UpstreamServer
        fields = [
            "slug",
            "name",
            "url",
            "auth_header_name",
            "auth_header_value",
            "enabled",
            "connect_timeout",
            "read_timeout",
        ]

    def clean_url(self):
        url = self.cleaned_data.get("url", "").strip()
        problem = upstream_url_problem(url)
        if problem:
            raise forms.ValidationError(problem)
        return url

    def clean_auth_header_value(self):
        # A password input never shows the stored value, so blank on an edit means "keep it".
        value = self.cleaned_data.get("auth_header_value") or ""
        if not value and self.instance.pk:
            return UpstreamServer.objects.values_list("auth_header_value", flat=True).get(pk=self.instance.pk)
        return value


@admin.register(UpstreamServer)
class UpstreamServerAdmin(RoleAdmin):
    form = UpstreamServerForm
    list_display = ["slug", "name", "url", "enabled", "era", "protocol_version", "has_credentials", "updated_at"]
    list_filter = ["enabled", "era"]
    search_fields = ["slug", "name", "url"]
    readonly_fields = ["era", "protocol_version", "created_at", "updated_at"]
    actions = ["enable_servers", "disable_servers"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "slug"] if obj else self.readonly_fields

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if self.has_change_permission(request, obj):
            return fields
        # Read-only pages render every field as text; the upstream credential must never be one.
        return [f for f in fields if f != "auth_header_value"]

    @admin.display(boolean=True, description="credentials")
    def has_credentials(self, obj: UpstreamServer) -> bool:
        return obj.has_credentials

    def save_model(self, request, obj, form, change):
        data = {k: form.cleaned_data[k] for k in SERVER_EDITABLE_FIELDS if k in form.cleaned_data}
        if change:
            upstream_server_update(server=obj, by=self.actor(request), **data)
        else:
            adopt(obj, upstream_server_create(slug=form.cleaned_data["slug"], by=self.actor(request), **data))

    @admin.action(description="Enable selected servers", permissions=["change"])
    def enable_servers(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda s: upstream_server_update(server=s, by=self.actor(request), enabled=True),
            "Enabled",
        )

    @admin.action(description="Disable selected servers", permissions=["change"])
    def disable_servers(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda s: upstream_server_update(server=s, by=self.actor(request), enabled=False),
            "Disabled",
        )


@admin.register(Tool)
class ToolAdmin(RoleAdmin):
    list_display = [
        "name",
        "server",
        "action",
        "default_action",
        "action_override",
        "resource_argument",
        "last_seen_at",
    ]
    list_filter = ["server", "default_action", "action_override"]
    list_select_related = ["server"]
    search_fields = ["name", "description", "server__slug"]
    fields = [
        "server",
        "name",
        "title",
        "description",
        "default_action",
        "action_override",
        "resource_argument",
        "annotations",
        "input_schema",
        "definition_hash",
        "first_seen_at",
        "last_seen_at",
    ]
    readonly_fields = [str(f) for f in fields if f not in ("action_override", "resource_argument")]

    def has_add_permission(self, request) -> bool:
        return False  # the catalog is filled from upstream tools/list

    def save_model(self, request, obj, form, change):
        tool_update(
            tool=obj,
            by=self.actor(request),
            action_override=form.cleaned_data["action_override"],
            resource_argument=form.cleaned_data["resource_argument"],
        )
