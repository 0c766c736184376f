"""Who is calling and which upstream they want, cached per process and checked against the cache
generation (proxy/generation.py).

The cache is what makes suspension and token revocation "take effect on the very next request in
every proxy process, with at most 1 s of caching": an entry is served only while the cache
generation it was read under is current, and each process checks that generation at least once
per generation.BOUND_SECONDS. Any change to an agent, token, role or upstream moves it. Entries
also expire after CACHE_SECONDS; under steady traffic they are re-read in the background from
REFRESH_AHEAD of that (TTLCache), so no request waits for the database.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.selectors import agent_token_authenticate
from behavry.dbthreads import refresh_ahead
from behavry.tokens import secret_digest
from proxy.generation import generation_watch
from proxy.models import UpstreamServer
from proxy.upstream import UpstreamTarget

# How long an entry lives at most, even while the cache generation stands still. Changes do not
# wait for this (the generation carries them within a second); it bounds what a missing trigger
# could cost, and keeps a token's last_used_at within a minute or so of its use.
CACHE_SECONDS = 60.0
# The share of an entry's lifetime after which a hit also re-reads it in the background. Late, as
# each re-read is a database thread hop of about 1 ms of CPU (bench/README.md).
REFRESH_AHEAD = 0.75
# Each entry's re-read point is drawn from [REFRESH_AHEAD - REFRESH_SPREAD, REFRESH_AHEAD] of its
# lifetime. Entries read together (a fleet's first calls, or all of them after the generation
# moved) would otherwise all be re-read in the same second 45 s later: with 100 agents, 100 thread
# hops of ~1 ms of CPU each in one second, on the cores that serve the calls. Spread, it is about
# 7 a second over 15 s (bench/README.md, 2026-12-03 fourth session).
REFRESH_SPREAD = 0.25
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


class TTLCache:
    """Entries served without the database while the cache generation they were read under is the
    current one (proxy/generation.py) and they are younger than `lifetime()` seconds; past its
    re-read point (REFRESH_AHEAD of that, less up to REFRESH_SPREAD), a hit also starts a re-read
    in the background (behavry.dbthreads.refresh_ahead), so steady traffic never waits for one.
    `lifetime` is a function so that the module constant it reads can be changed (tests, bench)."""

    def __init__(
        self,
        name: str,
        lifetime: Callable[[], float],
        max_entries: int = _MAX_ENTRIES,
        refresh_spread: float = REFRESH_SPREAD,
    ):
        self._name = name
        self._lifetime = lifetime
        self._max_entries = max_entries
        self._refresh_spread = refresh_spread
        self._lock = threading.Lock()
        self._data: dict = {}
        self._clears = 0  # moved by clear(): a read that started before it is not stored

    def get(
        self, key, generation: int | None, reload: Callable[..., Any] | None = None, *args: Any
    ) -> tuple[bool, Any]:
        """(True, value) on a hit. `generation` is the current cache generation: from the event
        loop generation_watch.peek() (None when unchecked for too long: every entry misses), on a
        database thread generation_watch.current(). With `reload`, a hit past the re-read point of its
        lifetime also runs `reload(*args)` on a database thread in the background; `reload` must
        store what it reads."""
        entry = self._data.get(key)
        if entry is not None and entry[1] == generation:
            age = time.monotonic() - entry[0]
            lifetime = self._lifetime()
            if age < lifetime:
                if reload is not None and age >= lifetime * entry[3]:
                    refresh_ahead((self._name, key), reload, *args)
                return True, entry[2]
        return False, None

    def read_started(self) -> tuple[float, int, int]:
        """Call on a database thread before reading the database; give the result to put().
        Checks the cache generation first if it is due (a query), and raises if it cannot."""
        clears = self._clears
        generation = generation_watch.current()
        return time.monotonic(), generation, clears

    def put(self, key, value, started: tuple[float, int, int]) -> None:
        """Store what a read that began at `started` found, under the generation current then:
        the entry ages from the start of the read, so a slow query cannot stretch its life, and
        a generation that moved during the read makes it a miss. A clear() since then discards it."""
        read_at, generation, clears = started
        with self._lock:
            if clears != self._clears:
                return
            if len(self._data) >= self._max_entries:
                self._data.clear()  # crude but bounded: a burst of new keys only costs re-reads
            refresh_at = REFRESH_AHEAD - self._refresh_spread * random.random()  # noqa: S311 (not a secret)
            self._data[key] = (read_at, generation, value, refresh_at)

    def clear(self) -> None:
        with self._lock:
            self._clears += 1
            self._data.clear()


_identities = TTLCache("identity", lambda: CACHE_SECONDS)
_targets = TTLCache("upstream", lambda: CACHE_SECONDS)


def cached_identity(raw: str) -> tuple[bool, AgentIdentity | None]:
    """A cache hit without touching the database, so the event loop need not hop to a thread."""
    key = secret_digest(raw)
    return _identities.get(key, generation_watch.peek(), _read_identity, raw, key)


def cached_target(slug: str) -> tuple[bool, UpstreamTarget | None]:
    return _targets.get(slug, generation_watch.peek(), _read_target, slug)


def identity_for_token(raw: str) -> AgentIdentity | None:
    """The agent behind a bearer token (None if unknown or revoked). Runs queries: call off the loop."""
    key = secret_digest(raw)
    hit, value = _identities.get(key, generation_watch.current())
    if hit:
        return value
    return _read_identity(raw, key)


def _read_identity(raw: str, key: str) -> AgentIdentity | None:
    started = _identities.read_started()
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
    _identities.put(key, identity, started)
    return identity


def target_for_slug(slug: str) -> UpstreamTarget | None:
    """The enabled upstream with this slug, or None."""
    hit, value = _targets.get(slug, generation_watch.current())
    if hit:
        return value
    return _read_target(slug)


def _read_target(slug: str) -> UpstreamTarget | None:
    started = _targets.read_started()
    server = UpstreamServer.objects.filter(slug=slug, enabled=True).first()
    target = upstream_target(server) if server is not None else None
    _targets.put(slug, target, started)
    return target


def upstream_target(server: UpstreamServer) -> UpstreamTarget:
    return UpstreamTarget(
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


def clear_caches() -> None:
    from proxy.classify import _rows
    from proxy.upstream import _param_maps

    _identities.clear()
    _targets.clear()
    _rows.clear()
    _param_maps().clear()
    generation_watch.reset()
