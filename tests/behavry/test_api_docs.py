"""The OpenAPI schema and its readers, served by Behavry itself with no CDN."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import yaml

pytestmark = pytest.mark.django_db


def test_the_schema_is_served_as_openapi_3(client):
    response = client.get("/api/v1/schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "Behavry API"
    assert "/api/v1/escalations/{id}/approve/" in schema["paths"]


@pytest.mark.parametrize("path", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_the_readers_load_their_assets_from_behavry_not_a_cdn(client, path):
    html = client.get(path).content.decode()

    assert "/static/drf_spectacular_sidecar/" in html
    for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs"):
        assert cdn not in html
    asset = html.split('src="')[1].split('"')[0] if 'src="' in html else None
    if asset and asset.startswith("/static/"):
        assert client.get(asset).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_swagger_ui_renders_every_operation_with_the_network_cut_off(live_server, page):
    host = urlsplit(live_server.url).netloc
    foreign: list[str] = []

    def only_behavry(route):
        if urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_behavry)
    page.goto(f"{live_server.url}/api/v1/docs/")
    page.wait_for_selector(".opblock", timeout=20_000)

    assert page.locator(".opblock").count() >= 50
    assert "Behavry API" in page.inner_text(".information-container")
    assert foreign == []


@pytest.mark.django_db(transaction=True)
def test_the_httpx_example_in_docs_api_md_approves_an_escalation(live_server, approver_key):
    """The integration example is run as written (only the base URL is pointed at this server)."""
    import re
    from pathlib import Path

    from escalations.models import Escalation
    from tests.escalations.helpers import open_escalation
    from tests.factories import AgentFactory

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('API = "http://127.0.0.1:8000/api/v1"', f'API = "{live_server.url}/api/v1"')
    held = open_escalation(AgentFactory(), tool="write_file", request_id="docs-1")
    other = open_escalation(AgentFactory(), tool="send_email", request_id="docs-2")
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own docs, run to prove they work

    decided = namespace["approve_pending"](approver_key, "write_file", "ok from the docs test")

    assert decided == [held.pk]
    assert Escalation.objects.get(pk=held.pk).status == "approved"
    assert Escalation.objects.get(pk=other.pk).status == "pending"
