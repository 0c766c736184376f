from __future__ import annotations

from django.db import models
from django.utils import timezone

from audit.fields import CanonicalJSONField

GENESIS_HASH = "0" * 64


class AuditKind(models.TextChoices):
    DECISION = "decision", "Decision"
    OUTCOME = "outcome", "Outcome"
    ADMIN = "admin", "Admin action"


class AuditEvent(models.Model):
    """One immutable line of the audit trail.

    Events form hash chains: `event_hash = sha256(canonical_json(fields) + previous_hash)`, where
    `fields` are the columns listed in `audit.chain.HASHED_FIELDS`. There is one chain per agent
    (`agent:<id>`, its decisions and outcomes) and one `admin` chain (people, keys and Behavry
    itself changing things). `seq` numbers each chain from 1 without gaps, so a deleted, inserted
    or reordered row breaks the chain. Rows are written only by `audit.services.audit_record`; on
    PostgreSQL a trigger refuses UPDATE and DELETE outright (see the 0002 migration).

    Agent, server and actor are copied as plain values, not foreign keys: the record must outlive
    the rows it talks about, and a cascading SET NULL would be an UPDATE.
    """

    chain = models.CharField(max_length=40)
    seq = models.PositiveBigIntegerField()
    timestamp = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=10, choices=AuditKind.choices)
    agent_id = models.BigIntegerField(null=True, blank=True)
    agent_name = models.CharField(max_length=100, blank=True)
    session = models.CharField(max_length=64, blank=True)
    server = models.CharField(max_length=64, blank=True)
    tool = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=64, blank=True, help_text="Verb class for calls; operation for admin events.")
    resource = models.CharField(max_length=1000, blank=True)
    decision = models.CharField(max_length=16, blank=True)
    policy_id = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    request_id = models.CharField(max_length=100, blank=True)
    actor = models.CharField(max_length=300, blank=True, help_text="kind:name of who acted")
    latency_ms = models.FloatField(null=True, blank=True)
    arguments = CanonicalJSONField(default=dict, blank=True, help_text="Tool arguments, redacted.")
    trace = CanonicalJSONField(default=list, blank=True, help_text="Policy decision trace.")
    dlp_findings = CanonicalJSONField(default=list, blank=True, help_text="Finding type plus salted hash, never raw.")
    details = CanonicalJSONField(default=dict, blank=True)
    previous_hash = models.CharField(max_length=64)
    event_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="audit_event_unique_chain_seq"),
        ]
        indexes = [
            models.Index(fields=["agent_id", "-id"], name="audit_event_agent"),
            models.Index(fields=["timestamp"], name="audit_event_timestamp"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.kind} {self.decision or self.action}"


class AuditChainHead(models.Model):
    """The newest link of each chain, HMAC-signed with Behavry's secret.

    Appenders lock this row (SELECT … FOR UPDATE) to serialise writes to one chain while other
    chains append in parallel. The signature lets verification notice rows appended or removed at
    the end of a chain by someone who can write to the database but does not hold the secret.
    """

    chain = models.CharField(max_length=40, primary_key=True)
    seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    signature = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.chain} @ {self.seq}"


class AuditCheckpoint(models.Model):
    """A signed "chain truncated up to event X" marker left by retention.

    After old events are deleted, verification of the chain starts at `up_to_seq + 1` and expects
    that event's `previous_hash` to equal `up_to_hash`. Append-only like the events.
    """

    chain = models.CharField(max_length=40)
    up_to_seq = models.PositiveBigIntegerField()
    up_to_hash = models.CharField(max_length=64)
    deleted = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=300)
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["chain", "-up_to_seq"]
        constraints = [models.UniqueConstraint(fields=["chain", "up_to_seq"], name="audit_checkpoint_unique")]

    def __str__(self) -> str:
        return f"{self.chain} truncated to #{self.up_to_seq}"
