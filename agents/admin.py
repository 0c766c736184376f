from __future__ import annotations

from django import forms
from django.contrib import admin

from agents.models import Agent, AgentSession, AgentToken, Role
from agents.services import (
    agent_create,
    agent_reactivate,
    agent_suspend,
    agent_token_issue,
    agent_token_revoke,
    agent_update,
    role_create,
    role_update,
)
from behavry.admin_site import RoleAdmin, RoleInline, SecretIssuingAdmin, adopt


@admin.register(Role)
class RoleModelAdmin(RoleAdmin):
    list_display = ["name", "description", "agent_count"]
    search_fields = ["name", "description"]
    allow_delete = True

    @admin.display(description="agents")
    def agent_count(self, obj: Role) -> int:
        return obj.agents.count()

    def save_model(self, request, obj, form, change):
        if change:
            role_update(role=obj, name=obj.name, description=obj.description, by=self.actor(request))
        else:
            adopt(obj, role_create(name=obj.name, description=obj.description, by=self.actor(request)))


class AgentTokenInline(RoleInline, admin.TabularInline):
    """Tokens are issued from the token admin, which shows the secret once; here they are listed."""

    model = AgentToken
    extra = 0
    fields = ("prefix", "label", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    show_change_link = True


@admin.register(Agent)
class AgentAdmin(RoleAdmin):
    list_display = [
        "name",
        "owner",
        "status",
        "risk_tier",
        "risk_score",
        "role_names",
        "max_hold_seconds",
        "created_at",
    ]
    list_filter = ["status", "risk_tier", "roles"]
    search_fields = ["name", "owner", "description"]
    readonly_fields = [
        "status",
        "suspended_at",
        "suspended_reason",
        "risk_score",
        "risk_tier",
        "created_at",
        "updated_at",
    ]
    filter_horizontal = ["roles"]
    inlines = [AgentTokenInline]
    actions = ["suspend_agents", "reactivate_agents"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("roles")

    @admin.display(description="roles")
    def role_names(self, obj: Agent) -> str:
        return ", ".join(r.name for r in obj.roles.all())

    def save_model(self, request, obj, form, change):
        roles = [r.name for r in form.cleaned_data.get("roles", [])]
        fields = {k: form.cleaned_data[k] for k in ("name", "description", "owner", "max_hold_seconds")}
        if change:
            agent_update(agent=obj, by=self.actor(request), roles=roles, **fields)
        else:
            adopt(obj, agent_create(by=self.actor(request), roles=roles, **fields))

    def save_related(self, request, form, formsets, change):
        # Roles were set by the service in save_model; only inlines remain.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    @admin.action(description="Suspend selected agents (revokes all their sessions)", permissions=["change"])
    def suspend_agents(self, request, queryset):
        self.run_bulk(
            request,
            queryset,
            lambda a: agent_suspend(agent=a, by=self.actor(request), reason="bulk suspend from admin"),
            "Suspended",
        )

    @admin.action(description="Reactivate selected agents", permissions=["change"])
    def reactivate_agents(self, request, queryset):
        self.run_bulk(request, queryset, lambda a: agent_reactivate(agent=a, by=self.actor(request)), "Reactivated")


class AgentTokenAddForm(forms.ModelForm):
    class Meta:
        model = AgentToken
        fields = ["agent", "label"]


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return [("no", "Active"), ("yes", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        return queryset


@admin.register(AgentToken)
class AgentTokenAdmin(SecretIssuingAdmin):
    add_form = AgentTokenAddForm
    list_display = ["prefix", "agent", "label", "created_at", "last_used_at", "revoked_at"]
    list_filter = [RevokedFilter]
    list_select_related = ["agent"]
    autocomplete_fields = ["agent"]  # a <select> of every agent is megabytes with 100k agents
    show_full_result_count = False
    search_fields = ["prefix", "label", "agent__name"]
    readonly_fields = ["agent", "label", "prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_tokens"]

    def save_model(self, request, obj, form, change):
        token, raw = agent_token_issue(agent=obj.agent, label=obj.label, by=self.actor(request))
        adopt(obj, token)
        self.show_secret_once(request, f"New token for {token.agent.name}", raw)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        self.run_bulk(request, queryset, lambda t: agent_token_revoke(token=t, by=self.actor(request)), "Revoked")


@admin.register(AgentSession)
class AgentSessionAdmin(RoleAdmin):
    list_display = ["id", "agent", "server", "era", "protocol_version", "created_at", "last_seen_at", "ended_at"]
    list_filter = ["era", ("ended_at", admin.EmptyFieldListFilter)]
    list_select_related = ["agent", "server"]
    show_full_result_count = False
    search_fields = ["id", "agent__name", "upstream_session_id"]

    def has_add_permission(self, request) -> bool:
        return False  # sessions are created by MCP initialize, never by hand

    def has_change_permission(self, request, obj=None) -> bool:
        return False
