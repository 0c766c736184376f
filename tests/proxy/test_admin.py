"""Django admin for upstream servers and their tool catalog."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from proxy.models import Tool, ToolAction, UpstreamServer
from proxy.services import tool_catalog_sync
from tests.factories import UpstreamServerFactory

SERVERS_URL = reverse("admin:proxy_upstreamserver_changelist")
SERVER_ADD_URL = reverse("admin:proxy_upstreamserver_add")
TOOLS_URL = reverse("admin:proxy_tool_changelist")
SECRET = "Bearer s3cret-upstream-credential"

pytestmark = pytest.mark.django_db


def _login(client, request, persona: str):
    client.force_login(request.getfixturevalue(persona))


def _results(response) -> list:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _to_admin_login(response) -> bool:
    return response.status_code == 302 and response.url.startswith(reverse("admin:login"))


def _tools(server: UpstreamServer, *names: str) -> list[Tool]:
    return tool_catalog_sync(
        server=server,
        definitions=[
            {"name": name, "description": f"{name} a file", "inputSchema": {"properties": {"path": {}}}}
            for name in names
        ],
    )


def _server_form(**overrides) -> dict:
    data = {
        "slug": "files",
        "name": "Files",
        "url": "http://127.0.0.1:8765/mcp",
        "auth_header_name": "Authorization",
        "auth_header_value": SECRET,
        "enabled": "on",
        "connect_timeout": "5.0",
        "read_timeout": "300.0",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- changelists ---------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["admin_user", "viewer_user"])
@pytest.mark.parametrize("url", [SERVERS_URL, TOOLS_URL])
def test_it_lists_servers_and_tools_for_admin_and_viewer(client, request, persona, url):
    _tools(UpstreamServerFactory(), "read_file")
    _login(client, request, persona)

    assert len(_results(client.get(url))) == 1


@pytest.mark.parametrize("url", [SERVERS_URL, TOOLS_URL])
def test_it_sends_an_outsider_to_the_admin_login(client, outsider_user, url):
    client.force_login(outsider_user)

    assert _to_admin_login(client.get(url))


def test_it_searches_servers_by_url(client, viewer_user):
    UpstreamServerFactory(slug="files", url="http://files.internal/mcp")
    UpstreamServerFactory(slug="mail", url="http://mail.internal/mcp")
    client.force_login(viewer_user)

    assert [s.slug for s in _results(client.get(SERVERS_URL, {"q": "mail.internal"}))] == ["mail"]


def test_it_filters_servers_by_enabled(client, viewer_user):
    UpstreamServerFactory(slug="on")
    UpstreamServerFactory(slug="off", enabled=False)
    client.force_login(viewer_user)

    assert [s.slug for s in _results(client.get(SERVERS_URL, {"enabled__exact": "0"}))] == ["off"]


def test_it_searches_tools_by_name(client, viewer_user):
    _tools(UpstreamServerFactory(), "read_file", "delete_file")
    client.force_login(viewer_user)

    assert [t.name for t in _results(client.get(TOOLS_URL, {"q": "delete"}))] == ["delete_file"]


def test_it_filters_tools_by_server_and_by_default_action(client, viewer_user):
    files, mail = UpstreamServerFactory(slug="files"), UpstreamServerFactory(slug="mail")
    _tools(files, "read_file", "delete_file")
    _tools(mail, "send_mail")
    client.force_login(viewer_user)

    by_server = client.get(TOOLS_URL, {"server__id__exact": mail.pk})
    by_action = client.get(TOOLS_URL, {"default_action__exact": ToolAction.DELETE})

    assert [t.name for t in _results(by_server)] == ["send_mail"]
    assert [t.name for t in _results(by_action)] == ["delete_file"]


# --- enable / disable ----------------------------------------------------------------------------


def test_it_disables_and_enables_servers(client, admin_user):
    first, second = UpstreamServerFactory(), UpstreamServerFactory()
    selection = [first.pk, second.pk]
    client.force_login(admin_user)

    disabled = client.post(SERVERS_URL, {"action": "disable_servers", "_selected_action": selection})
    assert not UpstreamServer.objects.filter(enabled=True).exists()
    assert _messages(disabled) == ["Disabled 2 upstream servers."]
    client.get(SERVERS_URL)  # shows, and so clears, the first message
    enabled = client.post(SERVERS_URL, {"action": "enable_servers", "_selected_action": selection})

    assert not UpstreamServer.objects.filter(enabled=False).exists()
    assert _messages(enabled) == ["Enabled 2 upstream servers."]


def test_it_keeps_a_servers_credential_when_disabling_it(client, admin_user):
    server = UpstreamServerFactory(auth_header_value=SECRET)
    client.force_login(admin_user)

    client.post(SERVERS_URL, {"action": "disable_servers", "_selected_action": [server.pk]})

    server.refresh_from_db()
    assert (server.enabled, server.auth_header_value) == (False, SECRET)


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
@pytest.mark.parametrize(("action", "enabled"), [("disable_servers", True), ("enable_servers", False)])
def test_it_refuses_enable_and_disable_to_a_non_admin(client, request, persona, action, enabled):
    server = UpstreamServerFactory(enabled=enabled)
    _login(client, request, persona)

    response = client.post(SERVERS_URL, {"action": action, "_selected_action": [server.pk]})

    assert response.status_code == 200  # the changelist again; the action is not offered
    server.refresh_from_db()
    assert server.enabled is enabled


def test_it_refuses_disable_to_an_outsider(client, outsider_user):
    server = UpstreamServerFactory()
    client.force_login(outsider_user)

    response = client.post(SERVERS_URL, {"action": "disable_servers", "_selected_action": [server.pk]})

    assert _to_admin_login(response)
    server.refresh_from_db()
    assert server.enabled is True


# --- server add and change forms -----------------------------------------------------------------


def test_it_adds_a_server_with_its_credential(client, admin_user):
    client.force_login(admin_user)

    response = client.post(SERVER_ADD_URL, _server_form())

    assert response.status_code == 302
    server = UpstreamServer.objects.get(slug="files")
    assert (server.name, server.url, server.auth_header_value) == ("Files", "http://127.0.0.1:8765/mcp", SECRET)


def test_it_rejects_a_duplicate_slug_on_the_form(client, admin_user):
    UpstreamServerFactory(slug="files")
    client.force_login(admin_user)

    response = client.post(SERVER_ADD_URL, _server_form())

    assert response.status_code == 200
    assert "slug" in response.context["adminform"].form.errors


@pytest.mark.parametrize("persona", ["admin_user", "viewer_user"])
def test_it_never_shows_a_servers_credential_in_the_list(client, request, persona):
    UpstreamServerFactory(slug="files", auth_header_value=SECRET)
    _login(client, request, persona)

    response = client.get(SERVERS_URL)

    assert "files" in response.text  # the page did render the server
    assert "s3cret" not in response.text


def test_it_never_shows_a_servers_credential_to_an_admin_editing_it(client, admin_user):
    server = UpstreamServerFactory(slug="files", auth_header_value=SECRET)
    client.force_login(admin_user)

    change = client.get(reverse("admin:proxy_upstreamserver_change", args=[server.pk]))
    history = client.get(reverse("admin:proxy_upstreamserver_history", args=[server.pk]))

    assert change.context["has_change_permission"] is True
    assert 'name="auth_header_value"' in change.text
    assert "s3cret" not in change.text
    assert history.status_code == 200
    assert "s3cret" not in history.text


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_never_shows_a_servers_credential_on_the_read_only_page(client, request, persona):
    server = UpstreamServerFactory(slug="files", auth_header_value=SECRET)
    _login(client, request, persona)

    response = client.get(reverse("admin:proxy_upstreamserver_change", args=[server.pk]))

    assert response.status_code == 200
    assert "s3cret" not in response.text


def test_it_does_not_echo_the_credential_when_the_form_is_rejected(client, admin_user):
    client.force_login(admin_user)

    response = client.post(SERVER_ADD_URL, _server_form(url="not a url"))

    assert response.status_code == 200
    assert "url" in response.context["adminform"].form.errors
    assert "s3cret" not in response.text


def test_it_keeps_the_credential_when_an_edit_leaves_it_blank(client, admin_user):
    server = UpstreamServerFactory(slug="files", auth_header_value=SECRET)
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:proxy_upstreamserver_change", args=[server.pk]),
        _server_form(name="Renamed", auth_header_value=""),
    )

    assert response.status_code == 302
    server.refresh_from_db()
    assert server.name == "Renamed"
    assert server.auth_header_value == SECRET


def test_it_replaces_the_credential_when_an_edit_gives_a_new_one(client, admin_user):
    server = UpstreamServerFactory(slug="files", auth_header_value=SECRET)
    client.force_login(admin_user)

    client.post(
        reverse("admin:proxy_upstreamserver_change", args=[server.pk]),
        _server_form(auth_header_value="Bearer rotated"),
    )

    server.refresh_from_db()
    assert server.auth_header_value == "Bearer rotated"


def test_it_keeps_the_slug_read_only_on_edit(client, admin_user):
    server = UpstreamServerFactory(slug="files")
    client.force_login(admin_user)

    client.post(
        reverse("admin:proxy_upstreamserver_change", args=[server.pk]),
        _server_form(slug="renamed", auth_header_value="Bearer x"),
    )

    server.refresh_from_db()
    assert server.slug == "files"


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_refuses_server_add_and_change_to_a_non_admin(client, request, persona):
    server = UpstreamServerFactory(slug="files", name="Files")
    _login(client, request, persona)

    add = client.post(SERVER_ADD_URL, _server_form(slug="other"))
    change = client.post(reverse("admin:proxy_upstreamserver_change", args=[server.pk]), _server_form(name="Hijacked"))

    assert (add.status_code, change.status_code) == (403, 403)
    assert list(UpstreamServer.objects.values_list("slug", "name")) == [("files", "Files")]


def test_it_hides_server_deletion_from_everyone(client, admin_user):
    server = UpstreamServerFactory()
    client.force_login(admin_user)

    page = client.get(reverse("admin:proxy_upstreamserver_change", args=[server.pk]))
    response = client.post(reverse("admin:proxy_upstreamserver_delete", args=[server.pk]), {"post": "yes"})

    assert page.context["has_delete_permission"] is False
    assert response.status_code == 403
    assert UpstreamServer.objects.filter(pk=server.pk).exists()


# --- tool admin ----------------------------------------------------------------------------------


def test_it_lets_an_admin_correct_a_tools_action_and_resource_argument(client, admin_user):
    (tool,) = _tools(UpstreamServerFactory(), "read_file")
    original_hash = tool.definition_hash
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:proxy_tool_change", args=[tool.pk]),
        {
            "action_override": ToolAction.DELETE,
            "resource_argument": "  target  ",
            "name": "renamed",  # read-only: must be ignored
            "definition_hash": "forged",
        },
    )

    assert response.status_code == 302
    tool.refresh_from_db()
    assert (tool.action_override, tool.action, tool.resource_argument) == (ToolAction.DELETE, "delete", "target")
    assert (tool.name, tool.definition_hash) == ("read_file", original_hash)


def test_it_clears_a_tools_action_override(client, admin_user):
    (tool,) = _tools(UpstreamServerFactory(), "read_file")
    Tool.objects.filter(pk=tool.pk).update(action_override=ToolAction.WRITE)
    client.force_login(admin_user)

    client.post(
        reverse("admin:proxy_tool_change", args=[tool.pk]), {"action_override": "", "resource_argument": "path"}
    )

    tool.refresh_from_db()
    assert (tool.action_override, tool.action) == ("", ToolAction.READ)


def test_it_rejects_an_unknown_tool_action(client, admin_user):
    (tool,) = _tools(UpstreamServerFactory(), "read_file")
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:proxy_tool_change", args=[tool.pk]), {"action_override": "launch", "resource_argument": ""}
    )

    assert response.status_code == 200
    assert "action_override" in response.context["adminform"].form.errors
    tool.refresh_from_db()
    assert tool.action_override == ""


@pytest.mark.parametrize("persona", ["viewer_user", "approver_user"])
def test_it_refuses_tool_changes_to_a_non_admin(client, request, persona):
    (tool,) = _tools(UpstreamServerFactory(), "read_file")
    _login(client, request, persona)

    response = client.post(
        reverse("admin:proxy_tool_change", args=[tool.pk]),
        {"action_override": ToolAction.DELETE, "resource_argument": "x"},
    )

    assert response.status_code == 403
    tool.refresh_from_db()
    assert (tool.action_override, tool.resource_argument) == ("", "path")


def test_it_offers_no_tool_add_or_delete_even_to_an_admin(client, admin_user):
    (tool,) = _tools(UpstreamServerFactory(), "read_file")
    client.force_login(admin_user)

    add = client.get(reverse("admin:proxy_tool_add"))
    delete = client.post(reverse("admin:proxy_tool_delete", args=[tool.pk]), {"post": "yes"})

    assert (add.status_code, delete.status_code) == (403, 403)
    assert Tool.objects.filter(pk=tool.pk).exists()
