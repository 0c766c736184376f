"""One number for everything the proxy caches per process: the cache generation.

The tool-call path reads agents (with their tokens and roles), upstream servers and catalog rows
from per-process caches (proxy/identity.py, proxy/classify.py). A change to any of those rows must
reach every process within BOUND_SECONDS (suspension, token revocation, a reclassified tool).

Before this, each cached entry was re-read from the database once a second. That cost one database
thread hop (about 1 ms of CPU) per entry per second, on the request path for an agent that calls
less than once a second: with 100 agents at one call a second each, 6.1 ms of CPU per call instead
of 2.5 (bench/README.md). Now database triggers move one number, `proxy_cachegeneration.generation`,
in the same transaction as any change to those rows, and each process checks that one number at
least once per BOUND_SECONDS. An entry is served while the generation it was read under is still
the current one and the last check began less than BOUND_SECONDS ago; any change makes every entry
a miss, to be read again. Entries also expire after their cache's own lifetime (a minute), which
bounds the harm if someone drops the triggers and keeps a token's last_used_at moving.

Why triggers and not the service functions: the Django admin's bulk edits, `QuerySet.update()`,
risk recomputation and an operator's SQL all change these rows; a trigger sees every one of them.
On PostgreSQL the triggers are deferred constraint triggers that move the number once per
transaction, at commit: the counter row is locked only for the commit itself, so two transactions
can never deadlock over it (an immediate trigger would hold it from the first changed row, while
the transaction goes on to lock others). SQLite has one writer at a time anyway.

The triggers are (re)installed after every `migrate` and `flush` (post_migrate, see apps.py): a
migration that rebuilds a table on SQLite drops the table's triggers, and this puts them back.
"""

from __future__ import annotations

import logging
import threading
import time

from django.db import connection, connections

logger = logging.getLogger("behavry.proxy")

# A change to a cached row applies in every process within this many seconds.
BOUND_SECONDS = 1.0
# The share of BOUND_SECONDS after which the event loop, still serving, also starts a check in the
# background (behavry.dbthreads.refresh_ahead); the on-path check happens only when no call came
# for the last quarter of it.
CHECK_AHEAD = 0.75

TABLE = "proxy_cachegeneration"
TRIGGER_PREFIX = "behavry_cache_v2_"  # a new version of the column lists gets a new prefix (v2: input_schema)


def watched_tables() -> list[tuple[str, tuple[str, ...] | None]]:
    """(table, columns whose UPDATE matters; None for any) for every row the proxy caches.
    INSERT and DELETE always count. Names come from the models, so a renamed column follows."""
    from agents.models import Agent, AgentToken, Role
    from proxy.models import Tool, UpstreamServer

    def columns(model, *names: str) -> tuple[str, ...]:
        return tuple(model._meta.get_field(name).column for name in names)

    return [
        # Not risk_score, which risk recomputation rewrites all the time; the tier it maps to counts.
        (Agent._meta.db_table, columns(Agent, "name", "status", "risk_tier", "max_hold_seconds")),
        # Not last_used_at, which authentication itself moves.
        (AgentToken._meta.db_table, columns(AgentToken, "token_hash", "revoked_at", "agent")),
        (Agent.roles.through._meta.db_table, None),
        (Role._meta.db_table, columns(Role, "name")),
        (UpstreamServer._meta.db_table, None),
        (
            Tool._meta.db_table,
            columns(Tool, "server", "name", "default_action", "action_override", "resource_argument", "input_schema"),
        ),
    ]


def _pg_function() -> str:
    return f"""
CREATE OR REPLACE FUNCTION behavry_cache_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per transaction: the deferred triggers of every changed row fire at commit.
    IF current_setting('behavry.cache_generation_moved', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('behavry.cache_generation_moved', 'on', true);
    INSERT INTO {TABLE} (id, generation) VALUES (1, 1)
        ON CONFLICT (id) DO UPDATE SET generation = {TABLE}.generation + 1;
    RETURN NULL;
END $$"""  # noqa: S608 (TABLE is a module constant, never input)


def _pg_triggers() -> dict[str, str]:
    """Trigger name -> its CREATE statement."""
    out = {}
    for table, cols in watched_tables():
        deferred = "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        run = "EXECUTE FUNCTION behavry_cache_generation_bump()"
        name = f"{TRIGGER_PREFIX}{table}_id"
        out[name] = f'CREATE CONSTRAINT TRIGGER {name} AFTER INSERT OR DELETE ON "{table}" {deferred} {run}'
        name = f"{TRIGGER_PREFIX}{table}_u"
        if cols is None:
            on, when = "UPDATE", "OLD.* IS DISTINCT FROM NEW.*"
        else:
            on = "UPDATE OF " + ", ".join(f'"{c}"' for c in cols)
            when = " OR ".join(f'OLD."{c}" IS DISTINCT FROM NEW."{c}"' for c in cols)
        out[name] = f'CREATE CONSTRAINT TRIGGER {name} AFTER {on} ON "{table}" {deferred} WHEN ({when}) {run}'
    return out


_SQLITE_BUMP = (
    f"BEGIN INSERT INTO {TABLE} (id, generation) VALUES (1, 1) "  # noqa: S608
    "ON CONFLICT (id) DO UPDATE SET generation = generation + 1; END"
)


def _sqlite_triggers() -> dict[str, str]:
    out = {}
    for table, cols in watched_tables():
        for event in ("INSERT", "DELETE"):
            name = f"{TRIGGER_PREFIX}{table}_{event[0].lower()}"
            out[name] = f'CREATE TRIGGER {name} AFTER {event} ON "{table}" FOR EACH ROW {_SQLITE_BUMP}'
        name = f"{TRIGGER_PREFIX}{table}_u"
        if cols is None:
            out[name] = f'CREATE TRIGGER {name} AFTER UPDATE ON "{table}" FOR EACH ROW {_SQLITE_BUMP}'
        else:
            on = ", ".join(f'"{c}"' for c in cols)
            when = " OR ".join(f'OLD."{c}" IS NOT NEW."{c}"' for c in cols)
            out[name] = (
                f'CREATE TRIGGER {name} AFTER UPDATE OF {on} ON "{table}" FOR EACH ROW WHEN {when} {_SQLITE_BUMP}'
            )
    return out


def install_cache_triggers(using: str = "default") -> int:
    """Create the missing triggers and drop those of older versions; returns how many were
    created. Idempotent and cheap when all are there (post_migrate runs it after every migrate
    and every test flush). Skipped while a watched table does not exist yet."""
    conn = connections[using]
    tables = set(conn.introspection.table_names())
    if TABLE not in tables or any(table not in tables for table, _ in watched_tables()):
        return 0
    vendor = conn.vendor
    if vendor == "postgresql":
        wanted = _pg_triggers()
        query = "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE starts_with(tgname, 'behavry_cache_')"
    elif vendor == "sqlite":
        wanted = _sqlite_triggers()
        query = (
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, 14) = 'behavry_cache_'"
        )
    else:
        return 0
    with conn.cursor() as cursor:
        cursor.execute(query)
        present = dict(cursor.fetchall())
        missing = [name for name in wanted if name not in present]
        if vendor == "postgresql" and missing:
            cursor.execute(_pg_function())
        for name, table in present.items():
            if name not in wanted:  # an older version's trigger
                on = f" ON {table}" if vendor == "postgresql" else ""
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}{on}")
        for name in missing:
            cursor.execute(wanted[name])
    if missing:
        logger.info("installed %d cache generation triggers", len(missing))
    return len(missing)


def read_generation() -> int:
    """The database's cache generation (0 before the first change). Runs a query: off the loop."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT generation FROM {TABLE} WHERE id = 1")  # noqa: S608 (a constant)
        row = cursor.fetchone()
    return int(row[0]) if row else 0


class GenerationWatch:
    """This process's view of the cache generation: the value and when the check that read it
    began. Both in one tuple, so the event loop reads a consistent pair without a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state: tuple[int, float] = (0, float("-inf"))

    def peek(self) -> int | None:
        """For the event loop: the generation if the last check began less than BOUND_SECONDS ago,
        else None (the caller reads on a database thread). Past CHECK_AHEAD of it, a check also
        starts in the background."""
        generation, checked_at = self._state
        age = time.monotonic() - checked_at
        if age >= BOUND_SECONDS:
            return None
        if age >= CHECK_AHEAD * BOUND_SECONDS:
            from behavry.dbthreads import refresh_ahead

            refresh_ahead(("cache generation",), self.check)
        return generation

    def current(self) -> int:
        """On a database thread: the generation, checked now if the last check is too old.
        Raises if the database cannot be read (the caller fails closed)."""
        generation, checked_at = self._state
        if time.monotonic() - checked_at < BOUND_SECONDS:
            return generation
        return self.check()

    def check(self) -> int:
        """Read the generation, unless another thread began a check a moment ago."""
        with self._lock:
            generation, checked_at = self._state
            started = time.monotonic()  # the value's age counts from before the query
            if started - checked_at < CHECK_AHEAD * BOUND_SECONDS:
                return generation
            generation = read_generation()
            self._state = (generation, started)
            return generation

    def reset(self) -> None:
        """Forget the value: the next use checks (tests, clear_caches)."""
        with self._lock:
            self._state = (self._state[0], float("-inf"))


generation_watch = GenerationWatch()
