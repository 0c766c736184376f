from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.roles import PersonRole, has_role, role_of
from accounts.selectors import api_key_authenticate
from accounts.services import api_key_create, api_key_revoke
from behavry.errors import Conflict, InvalidInput
from behavry.tokens import API_KEY_KIND, secret_digest
from tests.conftest import TEST_ACTOR

pytestmark = pytest.mark.django_db


def test_it_creates_a_key_shown_once_and_stored_as_digest():
    key, raw = api_key_create(name="siem", role="viewer", by=TEST_ACTOR)
    assert raw.startswith(API_KEY_KIND)
    assert ApiKey.objects.get(pk=key.pk).key_hash == secret_digest(raw)
    assert key.created_by == "system:tests"


def test_it_refuses_bad_input_with_field_errors():
    with pytest.raises(InvalidInput) as exc:
        api_key_create(name="x", role="root", by=TEST_ACTOR)
    assert "role" in exc.value.fields
    with pytest.raises(InvalidInput) as exc:
        api_key_create(name=" ", role="viewer", by=TEST_ACTOR)
    assert "name" in exc.value.fields
    with pytest.raises(InvalidInput) as exc:
        api_key_create(name="x", role="viewer", expires_at=timezone.now() - timedelta(days=1), by=TEST_ACTOR)
    assert "expires_at" in exc.value.fields


def test_it_authenticates_until_revoked_or_expired():
    key, raw = api_key_create(name="k", role="admin", by=TEST_ACTOR)
    assert api_key_authenticate(raw).pk == key.pk
    api_key_revoke(key=key, by=TEST_ACTOR)
    assert api_key_authenticate(raw) is None
    with pytest.raises(Conflict):
        api_key_revoke(key=key, by=TEST_ACTOR)

    expiring, raw2 = api_key_create(
        name="e", role="admin", expires_at=timezone.now() + timedelta(hours=1), by=TEST_ACTOR
    )
    ApiKey.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api_key_authenticate(raw2) is None


def test_an_agent_token_is_never_an_api_key():
    assert api_key_authenticate("bhv_agent_" + "x" * 43) is None


def test_roles_rank_viewer_below_approver_below_admin(admin_user, approver_user, viewer_user, outsider_user):
    assert role_of(admin_user) == PersonRole.ADMIN
    assert has_role(approver_user, "viewer") and has_role(approver_user, "approver")
    assert not has_role(approver_user, "admin")
    assert has_role(viewer_user, "viewer") and not has_role(viewer_user, "approver")
    assert role_of(outsider_user) is None and not has_role(outsider_user, "viewer")


def test_an_inactive_person_has_no_role(admin_user):
    admin_user.is_active = False
    assert role_of(admin_user) is None


def test_a_revoked_key_has_no_role():
    key, _raw = api_key_create(name="k", role="admin", by=TEST_ACTOR)
    assert role_of(key) == PersonRole.ADMIN
    api_key_revoke(key=key, by=TEST_ACTOR)
    assert role_of(key) is None
