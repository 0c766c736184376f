"""The outcome event around the answer (proxy/handlers.py answer_after_outcome): the answer waits
until the event's statement is with PostgreSQL, not for its commit, and an outcome the database
refuses never withholds an answer that the upstream already gave."""

import contextlib

import pytest
from asgiref.sync import sync_to_async

from audit.models import AuditEvent
from proxy import handlers
from tests.audit.test_aio import audit_insert_trigger, drop_audit_insert_trigger
from tests.audit.test_one_statement_append import assert_chain_intact
from tests.proxy.conftest import outcomes_committed, run_in_thread
from tests.proxy.test_endpoint import modern_call, modern_headers, post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_server", "starter_policies")]


@pytest.fixture
def url(behavry_url):
    return f"{behavry_url}/mcp/demo"


@contextlib.asynccontextmanager
async def outcome_trigger(pg: str, sqlite: str = ""):
    """A trigger on outcome events only (decision events pass untouched)."""
    await sync_to_async(audit_insert_trigger)(when="NEW.kind = 'outcome'", pg=pg, sqlite=sqlite)
    try:
        yield
    finally:
        await sync_to_async(drop_audit_insert_trigger)()


def outcomes(agent):
    return list(AuditEvent.objects.filter(agent_id=agent.pk, kind="outcome").values_list("request_id", flat=True))


async def call(url, token, text):
    response = await post(url, modern_call("echo", {"message": text}), modern_headers(token, "tools/call", "echo"))
    assert response.status_code == 200
    return response.json()["result"]


@pytest.mark.postgres
async def test_the_answer_goes_out_while_the_outcome_commits(url, token, agent):
    await call(url, token, "warm")  # the chain's first event here takes the locking append
    async with outcome_trigger("PERFORM pg_sleep(2)"):
        result = await call(url, token, "slow commit")
        assert result["content"][0]["text"] == "Echo: slow commit"
        # The answer is here; its outcome event is still committing (for two seconds).
        assert handlers.outcomes_in_flight
        # not run_in_thread: that waits for outcomes in flight
        assert len(await sync_to_async(outcomes)(agent)) == 1  # only the warm-up's
        await outcomes_committed()
    assert not handlers.outcomes_in_flight
    assert len(await run_in_thread(outcomes, agent)) == 2
    await run_in_thread(assert_chain_intact, agent, 4)


async def test_an_outcome_the_database_refuses_is_counted_and_the_answer_still_goes_back(url, token, agent):
    """The upstream has already run the tool: withholding its answer would invite a retry that
    runs it twice. The refusal is logged and counted instead (both backends, both paths). This
    held before the answer stopped waiting for the commit too; it must still hold now that it does."""
    await call(url, token, "warm")
    before = handlers.stats["outcome_audit_failed"]
    async with outcome_trigger(
        "RAISE EXCEPTION 'outcome refused by test'", "SELECT RAISE(ABORT, 'outcome refused by test')"
    ):
        result = await call(url, token, "refused")
        await outcomes_committed()
    assert result["content"][0]["text"] == "Echo: refused" and not result.get("isError")
    assert handlers.stats["outcome_audit_failed"] == before + 1
    decisions = await run_in_thread(lambda: AuditEvent.objects.filter(agent_id=agent.pk, kind="decision").count())
    assert decisions == 2 and len(await run_in_thread(outcomes, agent)) == 1
    result = await call(url, token, "after")  # the refused append left the chain usable
    assert result["content"][0]["text"] == "Echo: after"
    await run_in_thread(assert_chain_intact, agent, 5)


async def test_an_outcome_event_that_cannot_be_built_does_not_hold_the_answer(url, token, agent, monkeypatch):
    """The answer waits for the outcome statement to be on the wire; an event that fails before
    any statement exists must release it too (the outcome task's end does)."""
    real_record = handlers.record

    async def record(req, **fields):
        if fields.get("kind") == "outcome":
            raise ValueError("outcome event could not be built")
        return await real_record(req, **fields)

    monkeypatch.setattr(handlers, "record", record)
    before = handlers.stats["outcome_audit_failed"]
    result = await call(url, token, "unbuilt")
    await outcomes_committed()
    assert result["content"][0]["text"] == "Echo: unbuilt" and not result.get("isError")
    assert handlers.stats["outcome_audit_failed"] == before + 1
    assert await run_in_thread(outcomes, agent) == []


async def test_a_failure_after_the_decision_is_an_audited_is_error_result(url, token, agent, monkeypatch):
    """Whatever breaks past the decision (here the upstream's answer cannot be read) ends as an
    outcome event and an isError result, not as a JSON-RPC error with no outcome."""

    async def unreadable(*args, **kwargs):
        raise AttributeError("'str' object has no attribute 'get'")

    monkeypatch.setattr(handlers, "first_response", unreadable)
    result = await call(url, token, "breaks")
    assert result["isError"] and "could not complete the call upstream" in result["content"][0]["text"]
    await outcomes_committed()
    outcome = await run_in_thread(lambda: AuditEvent.objects.filter(agent_id=agent.pk, kind="outcome").get())
    assert outcome.details["status"] == "upstream_error" and "AttributeError" in outcome.reason
