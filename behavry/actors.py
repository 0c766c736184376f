"""Who did something: a person, an API key, an agent, or Behavry itself.

Services take `by: Actor` so that the audit trail can name the acting principal the same way no
matter whether the change came from the REST API, the console, Django admin or a Celery job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Actor:
    kind: str  # "person" | "api_key" | "agent" | "system"
    id: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "name": self.name}


SYSTEM = Actor(kind="system", id="behavry", name="behavry")


def actor_for(principal: Any) -> Actor:
    """Build an Actor from a User, an ApiKey, an Agent, or pass an Actor through."""
    if isinstance(principal, Actor):
        return principal
    if principal is None:
        return SYSTEM
    model = getattr(principal, "_meta", None)
    label = model.label if model is not None else ""
    if label == "accounts.ApiKey":
        return Actor(kind="api_key", id=str(principal.pk), name=principal.name)
    if label == "agents.Agent":
        return Actor(kind="agent", id=str(principal.pk), name=principal.name)
    if getattr(principal, "is_authenticated", False):
        return Actor(kind="person", id=str(principal.pk), name=principal.get_username())
    raise TypeError(f"cannot attribute an action to {principal!r}")
