"""Who is calling and which upstream they want, cached for at most one second per process.

The cache is what makes suspension and token revocation "take effect on the very next request in
every proxy process, with at most 1 s of caching": each process re-reads a token's row (and its
agent's status) once per second at most, and never trusts it longer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from agents.selectors import agent_token_authenticate
from behavry.tokens import secret_digest
from proxy.models import UpstreamServer
from proxy.upstream import UpstreamTarget

CACHE_SECONDS = 1.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: int
    name: str
    active: bool
    roles: frozenset[str]
    risk_tier: str
    token_id: int
    max_hold_seconds: int = 50

    # Audit events take "anything with pk and name" as the agent.
    @property
    def pk(self) -> int:
        return self.agent_id


class _TTLCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._data: dict = {}

    def get(self, key):
        entry = self._data.get(key)
        if entry is not None and time.monotonic() - entry[0] < CACHE_SECONDS:
            return True, entry[1]
        return False, None

    def put(self, key, value) -> None:
        with self._lock:
            if len(self._data) >= _MAX_ENTRIES:
                self._data.clear()  # crude but bounded; entries only live a second anyway
            self._data[key] = (time.monotonic(), value)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_identities = _TTLCache()
_targets = _TTLCache()


def cached_identity(raw: str) -> tuple[bool, AgentIdentity | None]:
    """A cache hit without touching the database, so the event loop need not hop to a thread."""
    return _identities.get(secret_digest(raw))


def cached_target(slug: str) -> tuple[bool, UpstreamTarget | None]:
    return _targets.get(slug)


def identity_for_token(raw: str) -> AgentIdentity | None:
    """The agent behind a bearer token (None if unknown or revoked). Runs queries: call off the loop."""
    key = secret_digest(raw)
    hit, value = _identities.get(key)
    if hit:
        return value
    token = agent_token_authenticate(raw)
    identity = None
    if token is not None:
        agent = token.agent
        identity = AgentIdentity(
            agent_id=agent.pk,
            name=agent.name,
            active=agent.is_active,
            roles=frozenset(agent.roles.values_list("name", flat=True)),
            risk_tier=agent.risk_tier,
            token_id=token.pk,
            max_hold_seconds=agent.max_hold_seconds,
        )
    _identities.put(key, identity)
    return identity


def target_for_slug(slug: str) -> UpstreamTarget | None:
    """The enabled upstream with this slug, or None."""
    hit, value = _targets.get(slug)
    if hit:
        return value
    server = UpstreamServer.objects.filter(slug=slug, enabled=True).first()
    target = None
    if server is not None:
        target = UpstreamTarget(
            id=server.pk,
            slug=server.slug,
            name=server.name,
            url=server.url,
            auth_header_name=server.auth_header_name,
            auth_header_value=server.auth_header_value,
            connect_timeout=server.connect_timeout,
            read_timeout=server.read_timeout,
            era=server.era,
            protocol_version=server.protocol_version,
        )
    _targets.put(slug, target)
    return target


def clear_caches() -> None:
    from proxy.classify import _rows

    _identities.clear()
    _targets.clear()
    _rows.clear()
