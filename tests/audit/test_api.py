"""Audit REST API: list and filters, cursor pages, CSV/JSONL export, verify/, and who may read them."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_revoke
from agents.services import agent_token_issue
from audit.api import EXPORT_COLUMNS, JSON_COLUMNS
from audit.chain import HASHED_FIELDS, event_hash
from audit.models import AuditChainHead
from audit.services import audit_admin, audit_record
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit-events/"
VERIFY_URL = f"{URL}verify/"
CONTRACT_FIELDS = {
    "id",
    "timestamp",
    "kind",
    "agent",
    "session",
    "server",
    "tool",
    "action",
    "resource",
    "decision",
    "policy_id",
    "reason",
    "request_id",
    "actor",
    "previous_hash",
    "event_hash",
}
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def call(agent, **fields):
    """A decision event for `agent`, with plausible defaults that each test overrides."""
    values = {
        "kind": "decision",
        "actor": TEST_ACTOR,
        "agent": agent,
        "session": "sess-1",
        "server": "files",
        "tool": "read_file",
        "action": "read",
        "resource": "/srv/report.txt",
        "decision": "allow",
        "policy_id": "p-default",
        "reason": "matched p-default",
        "request_id": "req-1",
    }
    return audit_record(**(values | fields))


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def export(response) -> str:
    """The streamed body of an export.

    Exports stream from an async iterator, as they do under ASGI. Iterating it synchronously makes
    Django warn and buffer it, so drain it asynchronously; async_to_sync keeps the export's queries
    on this thread, inside the test's transaction.
    """
    assert response.status_code == 200, response.content

    async def drain() -> bytes:
        return b"".join([part async for part in response.streaming_content])

    return async_to_sync(drain)().decode("utf-8")


@pytest.fixture
def clock(monkeypatch):
    """Frozen `timezone.now`, moved by assigning `clock.now`: exact timestamps, and nothing sleeps."""

    class Clock:
        now = T0

    frozen = Clock()
    monkeypatch.setattr(timezone, "now", lambda: frozen.now)
    return frozen


@pytest.fixture
def api(client, viewer_key):
    """A client reading the API as a viewer integration (the least role that may)."""
    client.defaults.update(bearer(viewer_key))
    return client


# --- list and detail -------------------------------------------------------------------------------


def test_it_lists_events_newest_first_with_every_contract_field(api):
    agent = AgentFactory()
    first = call(agent, decision="allow")
    second = call(agent, decision="deny")
    admin = audit_admin(by=TEST_ACTOR, operation="agent.suspend", agent=agent, reason="too noisy")

    response = api.get(URL)

    listed = ids(response)
    assert listed == sorted(listed, reverse=True)
    assert listed[:3] == [admin.pk, second.pk, first.pk]
    rows = {row["id"]: row for row in response.json()["results"]}
    for row in rows.values():
        assert set(row) >= CONTRACT_FIELDS
    expected = {
        "kind": "decision",
        "agent": agent.pk,
        "session": "sess-1",
        "server": "files",
        "tool": "read_file",
        "action": "read",
        "resource": "/srv/report.txt",
        "decision": "deny",
        "policy_id": "p-default",
        "reason": "matched p-default",
        "request_id": "req-1",
        "actor": "system:tests",
        "previous_hash": first.event_hash,
        "event_hash": second.event_hash,
    }
    assert {name: rows[second.pk][name] for name in expected} == expected
    assert datetime.fromisoformat(rows[second.pk]["timestamp"]) == second.timestamp
    assert rows[admin.pk]["kind"] == "admin" and rows[admin.pk]["action"] == "agent.suspend"


def test_it_shows_one_event(api):
    event = call(AgentFactory(), tool="write_file", decision="escalate")

    response = api.get(f"{URL}{event.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) >= CONTRACT_FIELDS
    assert (body["id"], body["tool"], body["decision"], body["event_hash"]) == (
        event.pk,
        "write_file",
        "escalate",
        event.event_hash,
    )


@pytest.mark.parametrize("missing", ["999999", "99999999999999999999999", "not-a-number"])
def test_an_unknown_event_is_404_in_the_error_shape(api, missing):
    response = api.get(f"{URL}{missing}/")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found.", "fields": {}}}


# --- filters ---------------------------------------------------------------------------------------


def test_it_filters_by_agent_id_or_exact_name(api):
    ada, bob = AgentFactory(name="ada"), AgentFactory(name="ada-2")
    mine = [call(ada), call(ada)]
    call(bob)

    expected = [e.pk for e in reversed(mine)]
    assert ids(api.get(URL, {"agent": str(ada.pk)})) == expected
    assert ids(api.get(URL, {"agent": "ada"})) == expected
    assert ids(api.get(URL, {"agent": "ad"})) == []
    assert ids(api.get(URL, {"agent": "99999999999999999999999"})) == []  # beyond bigint: empty, not a 500


def test_a_non_ascii_digit_agent_is_not_a_server_error(api):
    assert api.get(URL, {"agent": "²"}).status_code in (200, 400)


@pytest.mark.parametrize(
    "field, wanted, other",
    [
        ("kind", "outcome", "decision"),
        ("decision", "deny", "allow"),
        ("policy_id", "p-block-shell", "p-default"),
        ("tool", "run_shell", "read_file"),
        ("server", "shell", "files"),
        ("action", "execute", "read"),
        ("request_id", "req-42", "req-41"),
    ],
)
def test_each_filter_keeps_only_matching_events(api, field, wanted, other):
    agent = AgentFactory()
    match = call(agent, **{field: wanted})
    call(agent, **{field: other})

    assert ids(api.get(URL, {field: wanted})) == [match.pk]


def test_filters_combine(api):
    ada, bob = AgentFactory(), AgentFactory()
    match = call(ada, decision="deny", tool="run_shell")
    call(ada, decision="allow", tool="run_shell")
    call(ada, decision="deny", tool="read_file")
    call(bob, decision="deny", tool="run_shell")

    assert ids(api.get(URL, {"agent": ada.pk, "decision": "deny", "tool": "run_shell"})) == [match.pk]


def test_since_is_inclusive_and_until_is_exclusive(api, clock):
    agent = AgentFactory()
    events = []
    for hour in (10, 11, 12):
        clock.now = T0.replace(hour=hour)
        events.append(call(agent))
    ten, eleven, noon = (e.pk for e in events)

    assert ids(api.get(URL, {"agent": agent.pk, "since": "2026-03-01T11:00:00Z"})) == [noon, eleven]
    assert ids(api.get(URL, {"agent": agent.pk, "until": "2026-03-01T11:00:00Z"})) == [ten]
    window = {"since": "2026-03-01T11:00:00Z", "until": "2026-03-01T12:00:00Z"}
    assert ids(api.get(URL, {"agent": agent.pk, **window})) == [eleven]
    # One microsecond either side of an event moves it in or out of the window.
    assert ids(api.get(URL, {"agent": agent.pk, "since": "2026-03-01T11:00:00.000001Z"})) == [noon]
    assert ids(api.get(URL, {"agent": agent.pk, "until": "2026-03-01T11:00:00.000001Z"})) == [eleven, ten]


def test_since_honours_a_utc_offset(api, clock):
    agent = AgentFactory()
    clock.now = T0
    call(agent)
    clock.now = T0 + timedelta(hours=1)
    later = call(agent)

    # 12:30 at +02:00 is 10:30 UTC: only the 11:00 UTC event is at or after it.
    assert ids(api.get(URL, {"agent": agent.pk, "since": "2026-03-01T12:30:00+02:00"})) == [later.pk]


def test_an_offset_postgresql_cannot_store_still_filters_by_the_instant(api, clock):
    # Python takes offsets to ±23:59, PostgreSQL only to ±15:59; the schemathesis run found this
    # as a 500 on PostgreSQL. The filter compares the UTC instant, identically on both backends.
    agent = AgentFactory()
    clock.now = T0
    call(agent)
    clock.now = T0 + timedelta(hours=1)
    later = call(agent)

    # 05:30 on the 2nd at +18:41 is 10:49 UTC on the 1st.
    assert ids(api.get(URL, {"agent": agent.pk, "since": "2026-03-02T05:30:00+18:41"})) == [later.pk]
    assert ids(api.get(URL, {"agent": agent.pk, "until": "2026-03-02T05:30:00+18:41"})) != [later.pk]


@pytest.mark.parametrize("field", ["since", "until"])
def test_an_instant_before_year_one_in_utc_is_400_naming_the_field(api, field):
    response = api.get(URL, {field: "0001-01-01T00:00:00+18:00"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


@pytest.mark.parametrize("field", ["since", "until"])
def test_a_malformed_time_is_400_naming_the_field(api, field):
    response = api.get(URL, {field: "yesterday-ish"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == [field]


def test_an_unknown_kind_is_400(api):
    response = api.get(URL, {"kind": "gossip"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["kind"]


# --- cursor pagination -----------------------------------------------------------------------------


def test_cursor_pages_walk_every_event_exactly_once(api):
    agent = AgentFactory()
    made = [call(agent, request_id=f"req-{n}").pk for n in range(5)]

    seen, pages = [], 0
    url, params = URL, {"agent": agent.pk, "page_size": 2}
    while url:
        body = api.get(url, params).json()
        assert len(body["results"]) <= 2
        seen += [row["id"] for row in body["results"]]
        url, params, pages = body["next"], None, pages + 1

    assert pages == 3
    assert seen == sorted(made, reverse=True)
    assert body["previous"] is not None


def test_page_size_is_capped_at_1000(api):
    # One event more than the cap is the least that tells a cap from an honoured page_size.
    agent = AgentFactory()
    for _ in range(1001):
        call(agent)

    body = api.get(URL, {"agent": agent.pk, "page_size": 5000}).json()

    assert len(body["results"]) == 1000
    assert body["next"] is not None


# --- exports ---------------------------------------------------------------------------------------


def test_csv_export_has_the_export_columns_and_one_row_per_matching_event(api):
    agent = AgentFactory()
    denied = [
        call(agent, decision="deny", latency_ms=12.5, arguments={"path": "/etc/shadow", "depth": 2}),
        call(agent, decision="deny"),
    ]
    call(agent, decision="allow")

    response = api.get(URL, {"format": "csv", "agent": agent.pk, "decision": "deny"})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="behavry-audit.csv"'
    header, *rows = list(csv.reader(io.StringIO(export(response))))
    assert tuple(header) == EXPORT_COLUMNS
    records = [dict(zip(header, row, strict=True)) for row in rows]
    assert [int(r["id"]) for r in records] == [denied[1].pk, denied[0].pk]
    newest, oldest = records[1], records[0]
    assert (oldest["event_hash"], oldest["previous_hash"]) == (denied[1].event_hash, denied[0].event_hash)
    assert newest["event_hash"] == denied[0].event_hash and len(newest["previous_hash"]) == 64
    assert (newest["agent_id"], newest["agent_name"], newest["decision"]) == (str(agent.pk), agent.name, "deny")
    assert newest["latency_ms"] == "12.5" and oldest["latency_ms"] == ""
    assert datetime.fromisoformat(newest["timestamp"]) == denied[0].timestamp
    for record in records:
        for column in JSON_COLUMNS:
            json.loads(record[column])  # JSON text, not a Python repr
    assert json.loads(newest["arguments"]) == {"path": "/etc/shadow", "depth": 2}
    assert json.loads(oldest["trace"]) == [] and json.loads(oldest["details"]) == {}


def test_jsonl_export_is_one_object_per_line_with_hashes(api):
    agent = AgentFactory()
    made = [call(agent, tool="read_file"), call(agent, tool="run_shell"), call(agent, tool="read_file")]

    response = api.get(URL, {"format": "jsonl", "agent": agent.pk, "tool": "read_file"})

    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    text = export(response)
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == [made[2].pk, made[0].pk]
    for line in lines:
        assert set(line) == set(EXPORT_COLUMNS)
        assert len(line["previous_hash"]) == len(line["event_hash"]) == 64


def test_a_jsonl_export_can_be_verified_offline(api, clock):
    """Re-hashing an exported line reproduces event_hash, and lines link up: no database needed."""
    agent = AgentFactory()
    clock.now = T0  # a whole second: isoformat() drops the microseconds, the hash must not care
    call(agent, latency_ms=3.0, arguments={"n": 1.0, "nested": {"list": [1, "two", None]}})
    clock.now = T0 + timedelta(microseconds=250)
    call(
        agent,
        kind="outcome",
        latency_ms=41.25,
        details={"status": "ok"},
        dlp_findings=[{"type": "email", "value": "x@y.z"}],
    )
    audit_admin(by=TEST_ACTOR, operation="agent.suspend", agent=agent, reason="müde ☕", details={"why": "test"})

    lines = [json.loads(line) for line in export(api.get(URL, {"format": "jsonl"})).splitlines()]

    assert len(lines) >= 3
    for line in lines:
        fields = {name: line[name] for name in HASHED_FIELDS} | {"timestamp": datetime.fromisoformat(line["timestamp"])}
        assert event_hash(fields, line["previous_hash"]) == line["event_hash"], line
    agent_chain = sorted((line for line in lines if line["chain"] == f"agent:{agent.pk}"), key=lambda x: x["seq"])
    assert agent_chain[1]["previous_hash"] == agent_chain[0]["event_hash"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", None])
def test_redacted_arguments_never_leave_the_api_raw(api, fmt):
    agent = AgentFactory()
    event = call(
        agent,
        arguments={"user": "ada", "password": "hunter2-do-not-leak", "note": "key AKIAEXAMPLESECRET99 here"},
        dlp_findings=[{"type": "aws_access_key", "value": "AKIAEXAMPLESECRET99"}],
    )

    if fmt is None:
        bodies = [api.get(URL).content.decode(), api.get(f"{URL}{event.pk}/").content.decode()]
    else:
        bodies = [export(api.get(URL, {"format": fmt}))]

    for body in bodies:
        assert "hunter2-do-not-leak" not in body
        assert "AKIAEXAMPLESECRET99" not in body
        assert "[redacted]" in body and "[redacted:aws_access_key]" in body


def test_an_unknown_export_format_is_400(api):
    response = api.get(URL, {"format": "xlsx"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["format"]


def test_an_export_with_a_malformed_filter_is_400_not_a_broken_file(api):
    response = api.get(URL, {"format": "csv", "since": "soon"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["since"]


# --- verify ----------------------------------------------------------------------------------------


def test_verify_is_ok_on_a_clean_trail(api):
    ada, bob = AgentFactory(), AgentFactory()
    for agent in (ada, ada, bob):
        call(agent)
    audit_admin(by=TEST_ACTOR, operation="policy.update", target="policy:1")

    response = api.get(VERIFY_URL)

    assert response.status_code == 200
    body = response.json()
    assert (body["ok"], body["status"], body["first_broken"]) == (True, "ok", None)
    # admin chain (the viewer key's creation + policy.update) and one chain per agent
    assert body["chains_checked"] == 3
    assert body["events_checked"] == 5


def test_verify_checks_only_the_chosen_agent_chain(api):
    ada, bob = AgentFactory(), AgentFactory()
    for agent in (ada, ada, bob):
        call(agent)

    body = api.get(VERIFY_URL, {"agent": ada.pk}).json()

    assert (body["status"], body["chains_checked"], body["events_checked"]) == ("ok", 1, 2)


def test_verify_names_the_first_broken_link(api):
    agent = AgentFactory()
    call(agent)
    call(agent)
    # The head is not append-only (appends move it); forging it without the secret must show.
    AuditChainHead.objects.filter(chain=f"agent:{agent.pk}").update(signature="0" * 64)

    body = api.get(VERIFY_URL, {"agent": agent.pk}).json()

    assert (body["ok"], body["status"]) == (False, "broken")
    assert body["first_broken"]["chain"] == f"agent:{agent.pk}"
    assert "signature" in body["first_broken"]["reason"]


def test_verify_since_checks_only_the_window(api, clock):
    agent = AgentFactory()
    for hour in (10, 11, 12):
        clock.now = T0.replace(hour=hour)
        call(agent)

    body = api.get(VERIFY_URL, {"agent": agent.pk, "since": "2026-03-01T11:00:00Z"}).json()

    assert (body["status"], body["events_checked"]) == ("ok", 2)


@pytest.mark.parametrize(
    "params, field",
    [({"agent": "abc"}, "agent"), ({"agent": "-1"}, "agent"), ({"since": "last tuesday"}, "since")],
)
def test_verify_rejects_bad_parameters(api, params, field):
    response = api.get(VERIFY_URL, params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert list(response.json()["error"]["fields"]) == [field]


def test_verify_rejects_a_non_ascii_digit_agent(api):
    response = api.get(VERIFY_URL, {"agent": "²"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["agent"]


def test_verify_of_an_agent_that_has_made_no_calls_is_ok(api):
    quiet = AgentFactory()
    call(AgentFactory())

    body = api.get(VERIFY_URL, {"agent": quiet.pk}).json()

    assert (body["status"], body["events_checked"], body["first_broken"]) == ("ok", 0, None)


# --- who may read ----------------------------------------------------------------------------------

ENDPOINTS = [
    pytest.param(URL, {}, id="list"),
    pytest.param(URL, {"format": "csv"}, id="csv"),
    pytest.param(URL, {"format": "jsonl"}, id="jsonl"),
    pytest.param(VERIFY_URL, {}, id="verify"),
    pytest.param("detail", {}, id="detail"),
]


@pytest.fixture
def some_event(db):
    return call(AgentFactory())


def resolve(url: str, event) -> str:
    return f"{URL}{event.pk}/" if url == "detail" else url


@pytest.mark.parametrize("url, params", ENDPOINTS)
def test_no_credentials_is_401_with_a_bearer_challenge(client, some_event, url, params):
    response = client.get(resolve(url, some_event), params)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_revoked_key_is_401(client, viewer_key, some_event):
    assert client.get(URL, **bearer(viewer_key)).status_code == 200
    api_key_revoke(key=ApiKey.objects.get(name="viewer-key"), by=TEST_ACTOR)

    for url in (URL, VERIFY_URL, f"{URL}{some_event.pk}/"):
        response = client.get(url, **bearer(viewer_key))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.parametrize("url, params", ENDPOINTS)
def test_an_agent_token_is_401(client, some_event, url, params):
    _token, raw = agent_token_issue(agent=AgentFactory(), by=TEST_ACTOR)
    response = client.get(resolve(url, some_event), params, **bearer(raw))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.parametrize("url, params", ENDPOINTS)
def test_an_outsider_person_is_403(client, outsider_user, some_event, url, params):
    client.force_login(outsider_user)
    response = client.get(resolve(url, some_event), params)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("url, params", ENDPOINTS)
@pytest.mark.parametrize("persona", ["viewer_key", "approver_key", "admin_key", "viewer_user"])
def test_a_viewer_or_higher_may_read(request, client, some_event, persona, url, params):
    if persona.endswith("_user"):
        client.force_login(request.getfixturevalue(persona))
        headers = {}
    else:
        headers = bearer(request.getfixturevalue(persona))

    response = client.get(resolve(url, some_event), params, **headers)

    assert response.status_code == 200, response.content
    body = export(response) if response.streaming else response.content.decode()
    if url != VERIFY_URL:
        assert some_event.event_hash in body
    else:
        assert json.loads(body)["status"] == "ok"
