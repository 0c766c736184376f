"""Django admin for agent roles, agents, agent tokens and agent sessions."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.urls import reverse

from agents.models import Agent, AgentSession, AgentStatus, AgentToken, Role, SessionEra
from agents.services import agent_suspend, agent_token_issue, agent_token_revoke
from behavry.actors import SYSTEM
from behavry.tokens import AGENT_TOKEN_KIND, secret_digest
from tests.factories import AgentFactory, RoleFactory, UpstreamServerFactory

AGENTS_URL = reverse("admin:agents_agent_changelist")
TOKENS_URL = reverse("admin:agents_agenttoken_changelist")
ROLES_URL = reverse("admin:agents_role_changelist")
SESSIONS_URL = reverse("admin:agents_agentsession_changelist")

pytestmark = pytest.mark.django_db


def _login(client, request, persona: str):
    client.force_login(request.getfixturevalue(persona))
    return client


def _results(response) -> list:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _session(agent: Agent, sid: str) -> AgentSession:
    return AgentSession.objects.create(id=sid, agent=agent, server=UpstreamServerFactory())


# --- changelists ---------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_user", "viewer_user"])
@pytest.mark.parametrize("url", [ROLES_URL, AGENTS_URL, TOKENS_URL, SESSIONS_URL])
def test_it_lists_each_model_for_admin_and_viewer(client, request, persona, url):
    agent = AgentFactory(name="listed-bot")
    agent.roles.add(RoleFactory(name="support-bots"))
    agent_token_issue(agent=agent, label="ci", by=SYSTEM)
    _session(agent, "sess-listed")

    response = _login(client, request, persona).get(url)

    assert len(_results(response)) == 1


@pytest.mark.parametrize("url", [ROLES_URL, AGENTS_URL, TOKENS_URL, SESSIONS_URL])
def test_it_sends_an_outsider_to_the_admin_login(client, outsider_user, url):
    client.force_login(outsider_user)

    response = client.get(url)

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_it_searches_roles_by_description(client, viewer_user):
    RoleFactory(name="support-bots", description="answers customer tickets")
    RoleFactory(name="build-bots", description="runs CI")
    client.force_login(viewer_user)

    response = client.get(ROLES_URL, {"q": "tickets"})

    assert [r.name for r in _results(response)] == ["support-bots"]


def test_it_counts_each_roles_agents(client, viewer_user):
    role = RoleFactory(name="support-bots")
    for _ in range(2):
        AgentFactory().roles.add(role)
    client.force_login(viewer_user)

    response = client.get(ROLES_URL)

    assert response.context["cl"].model_admin.agent_count(_results(response)[0]) == 2


def test_it_searches_agents_by_owner(client, viewer_user):
    AgentFactory(name="alpha", owner="payments-team")
    AgentFactory(name="beta", owner="growth-team")
    client.force_login(viewer_user)

    response = client.get(AGENTS_URL, {"q": "payments"})

    assert [a.name for a in _results(response)] == ["alpha"]


def test_it_filters_agents_by_status(client, viewer_user):
    AgentFactory(name="alpha")
    agent_suspend(agent=AgentFactory(name="beta"), by=SYSTEM)
    client.force_login(viewer_user)

    response = client.get(AGENTS_URL, {"status__exact": AgentStatus.SUSPENDED})

    assert [a.name for a in _results(response)] == ["beta"]


def test_it_filters_agents_by_role(client, viewer_user):
    role = RoleFactory(name="support-bots")
    AgentFactory(name="alpha").roles.add(role)
    AgentFactory(name="beta")
    client.force_login(viewer_user)

    response = client.get(AGENTS_URL, {"roles__id__exact": role.pk})

    assert [a.name for a in _results(response)] == ["alpha"]


def test_it_searches_tokens_by_agent_name(client, viewer_user):
    agent_token_issue(agent=AgentFactory(name="alpha"), by=SYSTEM)
    agent_token_issue(agent=AgentFactory(name="beta"), by=SYSTEM)
    client.force_login(viewer_user)

    response = client.get(TOKENS_URL, {"q": "alpha"})

    assert [t.agent.name for t in _results(response)] == ["alpha"]


@pytest.mark.parametrize(("value", "expected"), [("yes", ["old"]), ("no", ["new"])])
def test_it_filters_tokens_by_revocation(client, viewer_user, value, expected):
    agent = AgentFactory()
    old, _ = agent_token_issue(agent=agent, label="old", by=SYSTEM)
    agent_token_revoke(token=old, by=SYSTEM)
    agent_token_issue(agent=agent, label="new", by=SYSTEM)
    client.force_login(viewer_user)

    response = client.get(TOKENS_URL, {"revoked": value})

    assert [t.label for t in _results(response)] == expected


def test_it_never_shows_a_token_hash_in_the_token_list(client, viewer_user):
    token, _raw = agent_token_issue(agent=AgentFactory(), by=SYSTEM)
    client.force_login(viewer_user)

    response = client.get(TOKENS_URL)

    assert token.prefix in response.text
    assert token.token_hash not in response.text


def test_it_searches_sessions_by_agent_name(client, viewer_user):
    _session(AgentFactory(name="alpha"), "sess-a")
    _session(AgentFactory(name="beta"), "sess-b")
    client.force_login(viewer_user)

    response = client.get(SESSIONS_URL, {"q": "beta"})

    assert [s.id for s in _results(response)] == ["sess-b"]


def test_it_filters_sessions_by_era_and_by_open(client, viewer_user):
    agent = AgentFactory()
    _session(agent, "legacy-open")
    AgentSession.objects.create(id="modern-open", agent=agent, server=UpstreamServerFactory(), era=SessionEra.MODERN)
    ended = _session(AgentFactory(), "legacy-ended")
    agent_suspend(agent=ended.agent, by=SYSTEM)
    client.force_login(viewer_user)

    by_era = client.get(SESSIONS_URL, {"era__exact": SessionEra.MODERN})
    still_open = client.get(SESSIONS_URL, {"ended_at__isempty": "1"})

    assert [s.id for s in _results(by_era)] == ["modern-open"]
    assert sorted(s.id for s in _results(still_open)) == ["legacy-open", "modern-open"]


# --- bulk actions --------------------------------------------------------------------------------


def test_it_suspends_agents_and_ends_their_open_sessions(client, admin_user):
    alpha, beta = AgentFactory(name="alpha"), AgentFactory(name="beta")
    session = _session(alpha, "sess-alpha")
    client.force_login(admin_user)

    response = client.post(AGENTS_URL, {"action": "suspend_agents", "_selected_action": [alpha.pk, beta.pk]})

    assert response.status_code == 302
    assert set(Agent.objects.values_list("status", flat=True)) == {AgentStatus.SUSPENDED}
    alpha.refresh_from_db()
    assert alpha.suspended_reason == "bulk suspend from admin"
    session.refresh_from_db()
    assert session.ended_at is not None
    assert session.end_reason == "agent suspended"
    assert _messages(response) == ["Suspended 2 agents."]


def test_it_warns_about_an_already_suspended_agent_and_still_suspends_the_rest(client, admin_user):
    done = agent_suspend(agent=AgentFactory(name="done"), by=SYSTEM, reason="earlier")
    pending = AgentFactory(name="pending")
    client.force_login(admin_user)

    response = client.post(AGENTS_URL, {"action": "suspend_agents", "_selected_action": [done.pk, pending.pk]})

    pending.refresh_from_db()
    assert pending.status == AgentStatus.SUSPENDED
    done.refresh_from_db()
    assert done.suspended_reason == "earlier"
    assert sorted(_messages(response)) == ["Agent 'done' is already suspended.", "Suspended 1 agents."]


def test_it_reactivates_suspended_agents(client, admin_user):
    agent = agent_suspend(agent=AgentFactory(), by=SYSTEM, reason="test")
    client.force_login(admin_user)

    response = client.post(AGENTS_URL, {"action": "reactivate_agents", "_selected_action": [agent.pk]})

    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE
    assert agent.suspended_at is None
    assert _messages(response) == ["Reactivated 1 agents."]


def test_it_warns_when_reactivating_an_active_agent(client, admin_user):
    agent = AgentFactory(name="alpha")
    client.force_login(admin_user)

    response = client.post(AGENTS_URL, {"action": "reactivate_agents", "_selected_action": [agent.pk]})

    assert _messages(response) == ["Agent 'alpha' is not suspended."]


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_refuses_suspend_to_a_non_admin(client, request, persona):
    agent = AgentFactory()
    session = _session(agent, "sess-kept")

    response = _login(client, request, persona).post(
        AGENTS_URL, {"action": "suspend_agents", "_selected_action": [agent.pk]}
    )

    assert response.status_code == 200  # the changelist again; the action is not offered to them
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE
    session.refresh_from_db()
    assert session.ended_at is None


def test_it_refuses_reactivate_to_a_viewer(client, viewer_user):
    agent = agent_suspend(agent=AgentFactory(), by=SYSTEM)
    client.force_login(viewer_user)

    client.post(AGENTS_URL, {"action": "reactivate_agents", "_selected_action": [agent.pk]})

    agent.refresh_from_db()
    assert agent.status == AgentStatus.SUSPENDED


def test_it_refuses_suspend_to_an_outsider(client, outsider_user):
    agent = AgentFactory()
    client.force_login(outsider_user)

    response = client.post(AGENTS_URL, {"action": "suspend_agents", "_selected_action": [agent.pk]})

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))
    agent.refresh_from_db()
    assert agent.status == AgentStatus.ACTIVE


def test_it_revokes_tokens(client, admin_user):
    agent = AgentFactory()
    first, _ = agent_token_issue(agent=agent, by=SYSTEM)
    second, _ = agent_token_issue(agent=agent, by=SYSTEM)
    client.force_login(admin_user)

    response = client.post(TOKENS_URL, {"action": "revoke_tokens", "_selected_action": [first.pk, second.pk]})

    assert AgentToken.objects.filter(revoked_at__isnull=True).count() == 0
    assert _messages(response) == ["Revoked 2 agent tokens."]


def test_it_warns_when_revoking_a_revoked_token(client, admin_user):
    token, _ = agent_token_issue(agent=AgentFactory(), by=SYSTEM)
    agent_token_revoke(token=token, by=SYSTEM)
    client.force_login(admin_user)

    response = client.post(TOKENS_URL, {"action": "revoke_tokens", "_selected_action": [token.pk]})

    assert _messages(response) == [f"Token {token.prefix}… is already revoked."]


def test_it_refuses_token_revocation_to_a_viewer(client, viewer_user):
    token, _ = agent_token_issue(agent=AgentFactory(), by=SYSTEM)
    client.force_login(viewer_user)

    response = client.post(TOKENS_URL, {"action": "revoke_tokens", "_selected_action": [token.pk]})

    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is None


# --- add and change forms ------------------------------------------------------------------------


def _agent_form(**overrides) -> dict:
    data = {
        "name": "support-bot",
        "description": "answers tickets",
        "owner": "support-team",
        "max_hold_seconds": "30",
        "roles": [],
        # Management form of the token inline, in case it is shown.
        "tokens-TOTAL_FORMS": "0",
        "tokens-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_it_adds_an_agent_with_its_roles(client, admin_user):
    support, triage = RoleFactory(name="support-bots"), RoleFactory(name="triage")
    RoleFactory(name="unused")
    client.force_login(admin_user)

    response = client.post(reverse("admin:agents_agent_add"), _agent_form(roles=[support.pk, triage.pk]))

    assert response.status_code == 302
    agent = Agent.objects.get(name="support-bot")
    assert sorted(agent.roles.values_list("name", flat=True)) == ["support-bots", "triage"]
    assert (agent.owner, agent.max_hold_seconds, agent.status) == ("support-team", 30, AgentStatus.ACTIVE)


def test_it_rejects_a_duplicate_agent_name_on_the_form(client, admin_user):
    AgentFactory(name="support-bot")
    client.force_login(admin_user)

    response = client.post(reverse("admin:agents_agent_add"), _agent_form())

    assert response.status_code == 200
    assert "name" in response.context["adminform"].form.errors
    assert Agent.objects.count() == 1


def test_it_changes_an_agents_roles_through_the_change_form(client, admin_user):
    old, new = RoleFactory(name="old-role"), RoleFactory(name="new-role")
    agent = AgentFactory(name="support-bot")
    agent.roles.add(old)
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:agents_agent_change", args=[agent.pk]), _agent_form(owner="new-team", roles=[new.pk])
    )

    assert response.status_code == 302
    agent.refresh_from_db()
    assert agent.owner == "new-team"
    assert list(agent.roles.values_list("name", flat=True)) == ["new-role"]


def test_it_keeps_status_read_only_on_the_change_form(client, admin_user):
    agent = agent_suspend(agent=AgentFactory(name="support-bot"), by=SYSTEM)
    client.force_login(admin_user)

    client.post(reverse("admin:agents_agent_change", args=[agent.pk]), _agent_form(status=AgentStatus.ACTIVE))

    agent.refresh_from_db()
    assert agent.status == AgentStatus.SUSPENDED


def test_it_adds_a_role(client, admin_user):
    client.force_login(admin_user)

    response = client.post(reverse("admin:agents_role_add"), {"name": "support-bots", "description": "tickets"})

    assert response.status_code == 302
    assert Role.objects.get(name="support-bots").description == "tickets"


def test_it_shows_a_new_tokens_secret_once_and_stores_only_its_digest(client, admin_user):
    agent = AgentFactory(name="support-bot")
    client.force_login(admin_user)

    response = client.post(reverse("admin:agents_agenttoken_add"), {"agent": agent.pk, "label": "laptop"}, follow=True)

    # the success message names the prefix; the secret itself appears in exactly one message
    shown = [m for m in _messages(response) if "not shown again" in m]
    assert len(shown) == 1
    raw = next(word for word in shown[0].split() if word.startswith(AGENT_TOKEN_KIND))
    token = AgentToken.objects.get()
    assert (token.agent, token.label) == (agent, "laptop")
    assert token.token_hash == secret_digest(raw)
    assert raw.startswith(token.prefix)
    assert raw not in client.get(TOKENS_URL).text


def test_it_names_a_new_token_by_its_prefix_in_the_admin_history(client, admin_user):
    client.force_login(admin_user)

    client.post(reverse("admin:agents_agenttoken_add"), {"agent": AgentFactory().pk, "label": "laptop"})

    assert LogEntry.objects.get().object_repr == str(AgentToken.objects.get())


def test_it_shows_a_token_read_only_even_to_an_admin(client, admin_user):
    token, _ = agent_token_issue(agent=AgentFactory(), label="laptop", by=SYSTEM)
    client.force_login(admin_user)
    url = reverse("admin:agents_agenttoken_change", args=[token.pk])

    page = client.get(url)
    client.post(url, {"label": "renamed"})

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    token.refresh_from_db()
    assert token.label == "laptop"


def test_it_lists_an_agents_tokens_on_its_change_page(client, admin_user):
    agent = AgentFactory()
    token, _ = agent_token_issue(agent=agent, label="laptop", by=SYSTEM)
    client.force_login(admin_user)

    response = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))

    assert token.prefix in response.text


# --- add and delete permissions ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["agents_role_add", "agents_agent_add", "agents_agenttoken_add"])
def test_it_refuses_add_pages_to_a_viewer(client, viewer_user, name):
    client.force_login(viewer_user)

    assert client.get(reverse(f"admin:{name}")).status_code == 403


def test_it_refuses_an_agent_add_post_from_a_viewer(client, viewer_user):
    client.force_login(viewer_user)

    response = client.post(reverse("admin:agents_agent_add"), _agent_form())

    assert response.status_code == 403
    assert not Agent.objects.exists()


def test_it_offers_no_session_add_page_even_to_an_admin(client, admin_user):
    client.force_login(admin_user)

    assert client.get(reverse("admin:agents_agentsession_add")).status_code == 403


def test_it_lets_an_admin_delete_a_role(client, admin_user):
    role = RoleFactory(name="old-role")
    client.force_login(admin_user)

    response = client.post(reverse("admin:agents_role_delete", args=[role.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Role.objects.exists()


def test_it_hides_role_deletion_from_a_viewer(client, viewer_user):
    role = RoleFactory(name="old-role")
    client.force_login(viewer_user)

    page = client.get(reverse("admin:agents_role_change", args=[role.pk]))
    response = client.post(reverse("admin:agents_role_delete", args=[role.pk]), {"post": "yes"})

    assert page.context["has_delete_permission"] is False
    assert reverse("admin:agents_role_delete", args=[role.pk]) not in page.text
    assert response.status_code == 403
    assert Role.objects.exists()


def test_it_never_lets_anyone_delete_an_agent(client, admin_user):
    agent = AgentFactory()
    client.force_login(admin_user)

    page = client.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    response = client.post(reverse("admin:agents_agent_delete", args=[agent.pk]), {"post": "yes"})
    bulk = client.post(AGENTS_URL, {"action": "delete_selected", "_selected_action": [agent.pk], "post": "yes"})

    assert page.context["has_delete_permission"] is False
    assert response.status_code == 403
    assert _messages(bulk) == ["No action selected."]  # "delete_selected" is not offered
    assert Agent.objects.filter(pk=agent.pk).exists()
