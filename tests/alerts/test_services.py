import threading

import pytest
from django.db import connection

from alerts.models import Alert, AlertStatus
from alerts.services import alert_acknowledge, alert_raise, alert_resolve
from behavry.errors import Conflict, InvalidInput
from tests.conftest import TEST_ACTOR
from tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def test_it_raises_an_open_alert():
    agent = AgentFactory()
    alert = alert_raise(type="anomaly", severity="warning", title="Volume spike", agent=agent, details={"z": 3.4})
    assert alert.status == AlertStatus.OPEN
    assert alert.agent == agent and alert.details == {"z": 3.4}


def test_it_makes_dlp_alerts_critical_whatever_was_asked():
    alert = alert_raise(type="dlp_violation", severity="info", title="AWS key in arguments")
    assert alert.severity == "critical"


def test_it_refuses_unknown_types_and_severities():
    with pytest.raises(InvalidInput):
        alert_raise(type="nope", severity="info", title="x")
    with pytest.raises(InvalidInput):
        alert_raise(type="anomaly", severity="loud", title="x")


def test_it_counts_repeats_of_an_unresolved_alert_instead_of_opening_new_ones():
    first = alert_raise(type="anomaly", severity="warning", title="spike", dedup_key="a:1:volume")
    again = alert_raise(type="anomaly", severity="warning", title="spike", dedup_key="a:1:volume")
    assert again.pk == first.pk and again.occurrences == 2
    alert_resolve(alert=again, by=TEST_ACTOR)
    fresh = alert_raise(type="anomaly", severity="warning", title="spike", dedup_key="a:1:volume")
    assert fresh.pk != first.pk and fresh.occurrences == 1


def test_it_acknowledges_with_a_note_then_resolves_as_false_positive():
    alert = alert_raise(type="anomaly", severity="warning", title="spike")
    alert_acknowledge(alert=alert, by=TEST_ACTOR, note="looking into it")
    alert.refresh_from_db()
    assert alert.status == AlertStatus.ACKNOWLEDGED and alert.acknowledged_by == "system:tests"
    with pytest.raises(Conflict):
        alert_acknowledge(alert=alert, by=TEST_ACTOR)
    alert_resolve(alert=alert, by=TEST_ACTOR, note="batch job", false_positive=True)
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED and alert.false_positive
    assert [(n.action, n.text) for n in alert.notes.all()] == [
        ("acknowledge", "looking into it"),
        ("resolve", "batch job"),
    ]
    with pytest.raises(Conflict):
        alert_resolve(alert=alert, by=TEST_ACTOR)


@pytest.mark.postgres  # SQLite serialises writers, so the race only exists on a server database
@pytest.mark.django_db(transaction=True)
def test_concurrent_raises_of_one_key_leave_one_alert():
    errors = []

    def raise_one():
        try:
            alert_raise(type="anomaly", severity="warning", title="spike", dedup_key="race")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=raise_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    alerts = Alert.objects.filter(dedup_key="race")
    assert alerts.count() == 1
    assert alerts.get().occurrences == 8
