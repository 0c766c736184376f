import time

import pytest
from django.core.cache import cache

from behavry.tasks import HEARTBEAT_CACHE_KEY, heartbeat

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_needs_a_recent_celery_heartbeat(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "celery": "no recent heartbeat"}
    heartbeat()
    assert client.get("/readyz").status_code == 200
    cache.set(HEARTBEAT_CACHE_KEY, time.time() - 3600)
    assert client.get("/readyz").status_code == 503


def test_the_console_sends_strangers_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    page = client.get("/login/")
    assert page.status_code == 200 and b"Sign in to Behavry" in page.content


def test_a_person_can_sign_in_with_a_password(client, admin_user):
    response = client.post("/login/", {"username": admin_user.username, "password": "correct horse battery staple"})
    assert response.status_code == 302
    assert b"alice-admin" in client.get("/").content


def test_a_wrong_password_is_refused(client, admin_user):
    response = client.post("/login/", {"username": admin_user.username, "password": "nope"})
    assert response.status_code == 200 and b"did not match" in response.content


def test_an_outsider_is_told_they_have_no_role(client, outsider_user):
    client.force_login(outsider_user)
    assert b"you have no console role" in client.get("/").content
