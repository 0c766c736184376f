"""People's roles: viewer < approver < admin.

Roles are Django groups with these exact names (created by a data migration), so they can be
granted in Django admin. A superuser counts as admin. API keys carry one role directly.
"""

from __future__ import annotations

from typing import Any

from django.db import models


class PersonRole(models.TextChoices):
    VIEWER = "viewer", "Viewer (read)"
    APPROVER = "approver", "Approver (decide escalations, handle alerts)"
    ADMIN = "admin", "Admin (everything)"


_RANK = {PersonRole.VIEWER: 1, PersonRole.APPROVER: 2, PersonRole.ADMIN: 3}


def role_of(principal: Any) -> PersonRole | None:
    """The highest role a user or API key holds, or None for an outsider."""
    if principal is None:
        return None
    meta = getattr(principal, "_meta", None)
    if meta is not None and meta.label == "accounts.ApiKey":
        return PersonRole(principal.role) if principal.is_usable() else None
    if not getattr(principal, "is_authenticated", False) or not getattr(principal, "is_active", False):
        return None
    if principal.is_superuser:
        return PersonRole.ADMIN
    if hasattr(principal, "_behavry_role"):
        cached: PersonRole | None = principal._behavry_role
        return cached
    names = set(principal.groups.values_list("name", flat=True))
    best = None
    for role in PersonRole:
        if role.value in names and (best is None or _RANK[role] > _RANK[best]):
            best = role
    principal._behavry_role = best
    return best


def has_role(principal: Any, needed: PersonRole | str) -> bool:
    role = role_of(principal)
    return role is not None and _RANK[role] >= _RANK[PersonRole(needed)]
