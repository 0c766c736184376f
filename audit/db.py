"""Database-level append-only protection for audit tables, and the one path that may delete.

PostgreSQL: a trigger refuses UPDATE and DELETE on events and checkpoints. DELETE is let through
only inside a transaction that ran `SET LOCAL behavry.audit_retention = 'on'`, which only
`retention_delete_window()` does.

SQLite (embedded default) gets UPDATE triggers only: Django's test flush and SQLite's lack of
session variables make a DELETE guard there more trouble than protection, and the chains catch
deletions anyway.

This stops mistakes and anyone using Behavry's own code paths. Someone holding the table owner's
credentials can still disable triggers (or TRUNCATE), which is what the signed hash chains are for.
"""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection

EVENT_TABLE = "audit_auditevent"
CHECKPOINT_TABLE = "audit_auditcheckpoint"

PG_INSTALL = f"""
CREATE OR REPLACE FUNCTION behavry_audit_append_only() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'DELETE' AND TG_TABLE_NAME = '{EVENT_TABLE}'
     AND current_setting('behavry.audit_retention', true) = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'behavry audit rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS behavry_audit_event_append_only ON {EVENT_TABLE};
CREATE TRIGGER behavry_audit_event_append_only BEFORE UPDATE OR DELETE ON {EVENT_TABLE}
  FOR EACH ROW EXECUTE FUNCTION behavry_audit_append_only();
DROP TRIGGER IF EXISTS behavry_audit_checkpoint_append_only ON {CHECKPOINT_TABLE};
CREATE TRIGGER behavry_audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON {CHECKPOINT_TABLE}
  FOR EACH ROW EXECUTE FUNCTION behavry_audit_append_only();
"""

PG_UNINSTALL = f"""
DROP TRIGGER IF EXISTS behavry_audit_event_append_only ON {EVENT_TABLE};
DROP TRIGGER IF EXISTS behavry_audit_checkpoint_append_only ON {CHECKPOINT_TABLE};
DROP FUNCTION IF EXISTS behavry_audit_append_only();
"""

SQLITE_INSTALL = [
    f"""CREATE TRIGGER IF NOT EXISTS behavry_audit_event_no_update BEFORE UPDATE ON {EVENT_TABLE}
BEGIN SELECT RAISE(ABORT, 'behavry audit rows are append-only: UPDATE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS behavry_audit_checkpoint_no_update BEFORE UPDATE ON {CHECKPOINT_TABLE}
BEGIN SELECT RAISE(ABORT, 'behavry audit rows are append-only: UPDATE refused'); END""",
]

SQLITE_UNINSTALL = [
    "DROP TRIGGER IF EXISTS behavry_audit_event_no_update",
    "DROP TRIGGER IF EXISTS behavry_audit_checkpoint_no_update",
]


def install_append_only(schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_INSTALL, params=None)  # the SQL has literal %s for RAISE
    elif vendor == "sqlite":
        for statement in SQLITE_INSTALL:
            schema_editor.execute(statement)


def uninstall_append_only(schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_UNINSTALL, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_UNINSTALL:
            schema_editor.execute(statement)


@contextmanager
def retention_delete_window():
    """Allow DELETE of audit events for the rest of the current transaction (retention only)."""
    if not connection.in_atomic_block:
        raise RuntimeError("retention deletes must run inside a transaction")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL behavry.audit_retention = 'on'")
    yield
