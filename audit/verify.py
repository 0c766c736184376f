"""Verifying the audit chains: report `ok` or the first broken event and why.

For each chain, events are walked in `seq` order and checked for:
- a gap or repeat in `seq` (a deleted or inserted row),
- `previous_hash` not equal to the preceding event's hash (a reordered, deleted or forged row),
- `event_hash` not equal to the hash recomputed from the stored fields (a modified row),
and at the end against the signed chain head (rows appended or removed at the tail). A retention
checkpoint, if present and correctly signed, is where the walk starts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.utils.dateparse import parse_datetime

from audit.chain import HASHED_FIELDS, agent_chain, checkpoint_signature_ok, head_signature_ok, make_row_hasher
from audit.models import GENESIS_HASH, AuditChainHead, AuditCheckpoint, AuditEvent

BATCH = 5000
_COLUMNS = ("id", *HASHED_FIELDS, "previous_hash", "event_hash")


@dataclass
class Broken:
    chain: str
    reason: str
    event_id: int | None = None
    seq: int | None = None


@dataclass
class VerifyResult:
    ok: bool
    chains_checked: int = 0
    events_checked: int = 0
    seconds: float = 0.0
    first_broken: Broken | None = None
    checkpoints: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = "ok" if self.ok else "broken"
        return data


def _chains(agent_id: int | None) -> list[str]:
    if agent_id is not None:
        return [agent_chain(agent_id)]
    # Chains named by a head, a checkpoint or any event: a chain whose head was deleted still shows.
    names = set(AuditChainHead.objects.values_list("chain", flat=True))
    names |= set(AuditCheckpoint.objects.values_list("chain", flat=True).distinct())
    names |= set(AuditEvent.objects.order_by().values_list("chain", flat=True).distinct())
    return sorted(names)


# Raw SQL on purpose: the JSON columns come back as their stored canonical text, which is the
# hash input as is (no parsing), and rows skip model instantiation. Column names are constants.
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM audit_auditevent WHERE chain = %s AND seq > %s ORDER BY seq LIMIT {BATCH}"  # noqa: S608
_SEQ = _COLUMNS.index("seq")
_TIMESTAMP = _COLUMNS.index("timestamp")


_ID = _COLUMNS.index("id")
_PREVIOUS = _COLUMNS.index("previous_hash")
_HASH = _COLUMNS.index("event_hash")
_row_hash = make_row_hasher(_COLUMNS)


def _rows(chain: str, from_seq: int):
    """Event rows (tuples in _COLUMNS order) of `chain` with seq >= from_seq, in keyset batches."""
    last = from_seq - 1
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_SELECT, [chain, last])
            batch = cursor.fetchall()
        if not batch:
            return
        for row in batch:
            stamp = row[_TIMESTAMP]
            if isinstance(stamp, str) or stamp.tzinfo is None:  # SQLite hands back naive UTC text
                parsed = parse_datetime(stamp) if isinstance(stamp, str) else stamp
                if parsed is None:  # unparseable text: hash it as stored, so the mismatch is reported
                    yield row
                    continue
                row = (*row[:_TIMESTAMP], parsed.replace(tzinfo=UTC), *row[_TIMESTAMP + 1 :])
            yield row
        last = batch[-1][_SEQ]


def verify_chain(chain: str, *, since: datetime | None = None) -> tuple[int, Broken | None, int | None]:
    """Check one chain. Returns (events checked, first problem or None, checkpoint seq or None)."""
    checkpoint = AuditCheckpoint.objects.filter(chain=chain).order_by("-up_to_seq").first()
    expected_seq, expected_prev = 1, GENESIS_HASH
    if checkpoint is not None:
        if not checkpoint_signature_ok(checkpoint.signature, chain, checkpoint.up_to_seq, checkpoint.up_to_hash):
            return 0, Broken(chain, "retention checkpoint signature is invalid (forged checkpoint)"), None
        expected_seq, expected_prev = checkpoint.up_to_seq + 1, checkpoint.up_to_hash
    if since is not None:
        first = (
            AuditEvent.objects.filter(chain=chain, timestamp__gte=since, seq__gte=expected_seq)
            .order_by("seq")
            .values_list("seq", "previous_hash")
            .first()
        )
        if first is None:
            return 0, None, checkpoint.up_to_seq if checkpoint else None  # nothing in the window
        if first[0] > expected_seq:
            expected_seq, expected_prev = first  # the link into the window cannot be checked from inside it

    checked = 0
    last_seq, last_hash = expected_seq - 1, expected_prev
    for row in _rows(chain, expected_seq):
        seq, event_id = row[_SEQ], row[_ID]
        if seq != last_seq + 1:
            reason = f"sequence gap: expected #{last_seq + 1}, found #{seq} (rows deleted)"
            return checked, Broken(chain, reason, event_id, seq), None
        if row[_PREVIOUS] != last_hash:
            reason = "previous_hash does not match the preceding event (rows reordered, inserted or deleted)"
            return checked, Broken(chain, reason, event_id, seq), None
        if _row_hash(row) != row[_HASH]:
            reason = "event_hash does not match the stored fields (event modified)"
            return checked, Broken(chain, reason, event_id, seq), None
        checked += 1
        last_seq, last_hash = seq, row[_HASH]

    head = AuditChainHead.objects.filter(chain=chain).first()
    if head is None and checked == 0 and checkpoint is None:
        return 0, None, None  # a chain never written to (an agent that made no calls)
    if head is None:
        return checked, Broken(chain, "chain head is missing (chain tampered with)", None, last_seq), None
    if not head_signature_ok(head.signature, chain, head.seq, head.last_hash):
        return checked, Broken(chain, "chain head signature is invalid (head forged or secret key changed)"), None
    if (head.seq, head.last_hash) != (last_seq, last_hash):
        reason = f"chain ends at #{last_seq} but its signed head is #{head.seq} (events removed or appended at the end)"
        return checked, Broken(chain, reason, None, last_seq), None
    return checked, None, checkpoint.up_to_seq if checkpoint else None


def audit_verify(*, agent_id: int | None = None, since: datetime | None = None) -> VerifyResult:
    started = time.perf_counter()
    result = VerifyResult(ok=True)
    for chain in _chains(agent_id):
        checked, broken, checkpoint_seq = verify_chain(chain, since=since)
        result.chains_checked += 1
        result.events_checked += checked
        if checkpoint_seq is not None:
            result.checkpoints[chain] = checkpoint_seq
        if broken is not None:
            result.ok = False
            result.first_broken = broken
            break
    result.seconds = round(time.perf_counter() - started, 3)
    return result
