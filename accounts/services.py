from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey
from accounts.roles import PersonRole
from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput
from behavry.tokens import API_KEY_KIND, secret_generate


@transaction.atomic
def api_key_create(*, name: str, role: str, by: Actor, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create an API key and return it with the raw key, which is not stored anywhere."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("An API key needs a name.", fields={"name": ["This field is required."]})
    if role not in PersonRole.values:
        raise InvalidInput(
            f"Unknown role {role!r}.", fields={"role": [f"Choose one of: {', '.join(PersonRole.values)}."]}
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("Expiry is in the past.", fields={"expires_at": ["Must be in the future."]})
    secret = secret_generate(API_KEY_KIND)
    key = ApiKey.objects.create(
        name=name,
        role=role,
        prefix=secret.prefix,
        key_hash=secret.digest,
        created_by=by.label,
        expires_at=expires_at,
    )
    audit_admin(
        by=by,
        operation="api_key.create",
        target=f"api_key:{key.pk}",
        details={"name": name, "role": role, "prefix": key.prefix, "expires_at": expires_at},
    )
    return key, secret.raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, by: Actor) -> ApiKey:
    updated = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if not updated:
        raise Conflict(f"API key {key.prefix}… is already revoked.")
    key.refresh_from_db()
    audit_admin(by=by, operation="api_key.revoke", target=f"api_key:{key.pk}", details={"prefix": key.prefix})
    return key


def person_roles_ensure() -> None:
    """Create the viewer/approver/admin groups if they are missing (also run by a migration)."""
    for role in PersonRole:
        Group.objects.get_or_create(name=role.value)
