"""Raw-SQL tampering for tests, the way an attacker with database access would do it.

On PostgreSQL the append-only trigger must be bypassed first (session_replication_role needs a
superuser, which the test database user is); on SQLite the UPDATE triggers are dropped and put back.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection, transaction

from audit.db import SQLITE_INSTALL


@contextmanager
def bypass_triggers():
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # SET LOCAL lasts to the end of the *outer* (test) transaction, so switch it back.
            cursor.execute("SET LOCAL session_replication_role = replica")
            try:
                yield cursor
            finally:
                cursor.execute("SET LOCAL session_replication_role = origin")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS behavry_audit_event_no_update")
            cursor.execute("DROP TRIGGER IF EXISTS behavry_audit_checkpoint_no_update")
            try:
                yield cursor
            finally:
                for statement in SQLITE_INSTALL:
                    cursor.execute(statement)


def tamper(sql: str, params: list | tuple = ()) -> None:
    with bypass_triggers() as cursor:
        cursor.execute(sql, params)
