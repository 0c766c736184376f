"""The admin site's role gate, and the API key admin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiKey
from accounts.roles import PersonRole
from accounts.services import api_key_create, api_key_revoke
from behavry.actors import SYSTEM
from behavry.tokens import API_KEY_KIND, secret_digest
from tests.factories import UserFactory

INDEX_URL = reverse("admin:index")
KEYS_URL = reverse("admin:accounts_apikey_changelist")
KEY_ADD_URL = reverse("admin:accounts_apikey_add")

pytestmark = pytest.mark.django_db


def _login(client, request, persona: str):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    return user


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _names(response) -> list[str]:
    assert response.status_code == 200
    return sorted(k.name for k in response.context["cl"].result_list)


def _to_admin_login(response) -> bool:
    return response.status_code == 302 and response.url.startswith(reverse("admin:login"))


# --- the admin site's gate -----------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_user", "approver_user", "viewer_user"])
def test_it_opens_the_index_to_every_role(client, request, persona):
    _login(client, request, persona)

    response = client.get(INDEX_URL)

    assert response.status_code == 200
    models = {m["object_name"] for app in response.context["app_list"] for m in app["models"]}
    assert {"Agent", "AgentToken", "Alert", "ApiKey", "Role", "Tool", "UpstreamServer"} <= models


def test_it_sends_an_outsider_from_the_index_to_the_admin_login(client, outsider_user):
    client.force_login(outsider_user)

    assert _to_admin_login(client.get(INDEX_URL))


def test_it_sends_an_anonymous_visitor_from_the_index_to_the_admin_login(client):
    assert _to_admin_login(client.get(INDEX_URL))


def test_it_shuts_out_a_deactivated_admin(client, admin_user):
    admin_user.is_active = False
    admin_user.save()
    client.force_login(admin_user)

    assert _to_admin_login(client.get(INDEX_URL))


def test_it_treats_a_superuser_without_groups_as_admin(client):
    client.force_login(UserFactory(username="root", is_superuser=True))

    assert client.get(KEY_ADD_URL).status_code == 200


def test_it_offers_add_links_only_to_those_who_may_add(client, viewer_user, admin_user):
    def add_urls(user):
        client.force_login(user)
        apps = client.get(INDEX_URL).context["app_list"]
        return {m["object_name"] for app in apps for m in app["models"] if m["add_url"]}

    assert add_urls(viewer_user) == set()
    assert add_urls(admin_user) == {"Agent", "AgentToken", "ApiKey", "Role", "UpstreamServer"}


# --- API key changelist --------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_user", "viewer_user"])
def test_it_lists_api_keys_for_admin_and_viewer(client, request, persona):
    key, _raw = api_key_create(name="ci", role=PersonRole.VIEWER, by=SYSTEM)
    _login(client, request, persona)

    response = client.get(KEYS_URL)

    assert _names(response) == ["ci"]
    assert key.prefix in response.text
    assert key.key_hash not in response.text


def test_it_sends_an_outsider_from_the_key_list_to_the_admin_login(client, outsider_user):
    client.force_login(outsider_user)

    assert _to_admin_login(client.get(KEYS_URL))


def test_it_searches_api_keys_by_name(client, viewer_user):
    api_key_create(name="grafana", role=PersonRole.VIEWER, by=SYSTEM)
    api_key_create(name="ticketing", role=PersonRole.APPROVER, by=SYSTEM)
    client.force_login(viewer_user)

    assert _names(client.get(KEYS_URL, {"q": "graf"})) == ["grafana"]


def test_it_filters_api_keys_by_role(client, viewer_user):
    api_key_create(name="grafana", role=PersonRole.VIEWER, by=SYSTEM)
    api_key_create(name="ticketing", role=PersonRole.APPROVER, by=SYSTEM)
    client.force_login(viewer_user)

    assert _names(client.get(KEYS_URL, {"role__exact": PersonRole.APPROVER})) == ["ticketing"]


def test_it_filters_api_keys_by_revocation(client, viewer_user):
    old, _ = api_key_create(name="old", role=PersonRole.VIEWER, by=SYSTEM)
    api_key_revoke(key=old, by=SYSTEM)
    api_key_create(name="new", role=PersonRole.VIEWER, by=SYSTEM)
    client.force_login(viewer_user)

    assert _names(client.get(KEYS_URL, {"revoked_at__isempty": "0"})) == ["old"]


# --- revoke_keys ---------------------------------------------------------------------------------


def test_it_revokes_api_keys(client, admin_user):
    first, _ = api_key_create(name="first", role=PersonRole.VIEWER, by=SYSTEM)
    second, _ = api_key_create(name="second", role=PersonRole.ADMIN, by=SYSTEM)
    client.force_login(admin_user)

    response = client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [first.pk, second.pk]})

    assert response.status_code == 302
    assert not ApiKey.objects.filter(revoked_at__isnull=True).exists()
    assert _messages(response) == ["Revoked 2 API keys."]


def test_it_warns_when_revoking_a_revoked_key_and_revokes_the_rest(client, admin_user):
    old, _ = api_key_create(name="old", role=PersonRole.VIEWER, by=SYSTEM)
    api_key_revoke(key=old, by=SYSTEM)
    new, _ = api_key_create(name="new", role=PersonRole.VIEWER, by=SYSTEM)
    client.force_login(admin_user)

    response = client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [old.pk, new.pk]})

    new.refresh_from_db()
    assert new.revoked_at is not None
    assert sorted(_messages(response)) == [f"API key {old.prefix}… is already revoked.", "Revoked 1 API keys."]


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_refuses_key_revocation_to_a_non_admin(client, request, persona):
    key, _ = api_key_create(name="ci", role=PersonRole.ADMIN, by=SYSTEM)
    _login(client, request, persona)

    response = client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [key.pk]})

    assert response.status_code == 200  # the changelist again; the action is not offered
    key.refresh_from_db()
    assert key.revoked_at is None


def test_it_refuses_key_revocation_to_an_outsider(client, outsider_user):
    key, _ = api_key_create(name="ci", role=PersonRole.ADMIN, by=SYSTEM)
    client.force_login(outsider_user)

    response = client.post(KEYS_URL, {"action": "revoke_keys", "_selected_action": [key.pk]})

    assert _to_admin_login(response)
    key.refresh_from_db()
    assert key.revoked_at is None


# --- adding a key --------------------------------------------------------------------------------


def test_it_shows_a_new_keys_secret_once_and_stores_only_its_digest(client, admin_user):
    client.force_login(admin_user)

    response = client.post(KEY_ADD_URL, {"name": "grafana", "role": PersonRole.VIEWER}, follow=True)

    # the success message names the prefix; the secret itself appears in exactly one message
    shown = [m for m in _messages(response) if "not shown again" in m]
    assert len(shown) == 1
    raw = next(word for word in shown[0].split() if word.startswith(API_KEY_KIND))
    key = ApiKey.objects.get()
    assert (key.name, key.role, key.created_by) == ("grafana", PersonRole.VIEWER, "person:alice-admin")
    assert key.key_hash == secret_digest(raw)
    assert raw.startswith(key.prefix)
    assert raw not in client.get(KEYS_URL).text
    assert raw not in client.get(reverse("admin:accounts_apikey_change", args=[key.pk])).text


def test_it_names_a_new_key_by_its_prefix_in_the_admin_history(client, admin_user):
    client.force_login(admin_user)

    client.post(KEY_ADD_URL, {"name": "grafana", "role": PersonRole.VIEWER})

    assert LogEntry.objects.get().object_repr == str(ApiKey.objects.get())


def test_it_adds_a_key_with_an_expiry(client, admin_user):
    client.force_login(admin_user)
    expiry = (timezone.now() + timedelta(days=30)).replace(microsecond=0, second=0)

    client.post(
        KEY_ADD_URL,
        {
            "name": "temp",
            "role": PersonRole.APPROVER,
            "expires_at_0": timezone.localtime(expiry).strftime("%Y-%m-%d"),
            "expires_at_1": timezone.localtime(expiry).strftime("%H:%M:%S"),
        },
    )

    assert ApiKey.objects.get().expires_at == expiry


def test_it_rejects_a_past_expiry_on_the_form(client, admin_user):
    client.force_login(admin_user)
    past = timezone.localtime(timezone.now() - timedelta(days=1))

    response = client.post(
        KEY_ADD_URL,
        {
            "name": "stale",
            "role": PersonRole.VIEWER,
            "expires_at_0": past.strftime("%Y-%m-%d"),
            "expires_at_1": past.strftime("%H:%M:%S"),
        },
    )

    assert response.status_code == 200
    assert "expires_at" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def test_it_shows_a_key_read_only_even_to_an_admin(client, admin_user):
    key, _ = api_key_create(name="ci", role=PersonRole.VIEWER, by=SYSTEM)
    client.force_login(admin_user)
    url = reverse("admin:accounts_apikey_change", args=[key.pk])

    page = client.get(url)
    client.post(url, {"name": "renamed", "role": PersonRole.ADMIN})

    assert page.context["has_change_permission"] is False
    key.refresh_from_db()
    assert (key.name, key.role) == ("ci", PersonRole.VIEWER)


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_refuses_the_add_page_to_a_non_admin(client, request, persona):
    _login(client, request, persona)

    get = client.get(KEY_ADD_URL)
    post = client.post(KEY_ADD_URL, {"name": "sneaky", "role": PersonRole.ADMIN})

    assert (get.status_code, post.status_code) == (403, 403)
    assert not ApiKey.objects.exists()


def test_it_never_lets_anyone_delete_a_key(client, admin_user, viewer_user):
    key, _ = api_key_create(name="ci", role=PersonRole.VIEWER, by=SYSTEM)
    delete_url = reverse("admin:accounts_apikey_delete", args=[key.pk])

    for user in (viewer_user, admin_user):
        client.force_login(user)
        page = client.get(reverse("admin:accounts_apikey_change", args=[key.pk]))
        assert page.context["has_delete_permission"] is False
        assert delete_url not in page.text
        assert client.post(delete_url, {"post": "yes"}).status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
