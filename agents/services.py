"""Every state change of agents, their roles, tokens and sessions goes through these functions."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import Agent, AgentSession, AgentStatus, AgentToken, Role
from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput
from behavry.tokens import AGENT_TOKEN_KIND, secret_generate

AGENT_EDITABLE_FIELDS = {"name", "description", "owner", "max_hold_seconds"}
# A session's last_seen_at moves at most this often (agent_session_touch): a call on a busy
# session costs a comparison, and the session one UPDATE a minute, not one per call.
SESSION_TOUCH_SECONDS = 60
# Idle sessions ended per transaction (agent_session_expire_idle), ended ones deleted per statement
# (agent_session_purge_ended): SQLite caps the parameters of one statement.
SESSION_EXPIRY_BATCH = 500


@transaction.atomic
def role_create(*, name: str, description: str = "", by: Actor) -> Role:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A role needs a name.", fields={"name": ["This field is required."]})
    role, created = Role.objects.get_or_create(name=name, defaults={"description": description})
    if created:
        audit_admin(by=by, operation="role.create", target=f"role:{role.name}")
    return role


@transaction.atomic
def role_update(*, role: Role, by: Actor, name: str | None = None, description: str | None = None) -> Role:
    if name is not None:
        name = name.strip()
        if not name or Role.objects.filter(name=name).exclude(pk=role.pk).exists():
            raise InvalidInput("Role names must be unique and non-empty.", fields={"name": ["Invalid or taken."]})
        if name != role.name:
            from policies.models import Policy  # policies match roles by name

            naming = [p.slug for p in Policy.objects.only("slug", "roles") if role.name in (p.roles or [])]
            if naming:
                raise InvalidInput(
                    f"Policies name role {role.name!r}: {', '.join(naming)}. Change them first.",
                    fields={"name": [f"Used by policies: {', '.join(naming)}."]},
                )
        role.name = name
    if description is not None:
        role.description = description
    role.save()
    audit_admin(by=by, operation="role.update", target=f"role:{role.name}", details={"description": role.description})
    return role


def _roles_by_name(names: Iterable[str]) -> list[Role]:
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    roles = list(Role.objects.filter(name__in=names))
    missing = sorted(set(names) - {r.name for r in roles})
    if missing:
        raise InvalidInput(
            f"Unknown role(s): {', '.join(missing)}.", fields={"roles": [f"Unknown: {', '.join(missing)}"]}
        )
    return roles


def _check_max_hold(value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= 86400:
        raise InvalidInput(
            "max_hold_seconds must be between 1 and 86400.",
            fields={"max_hold_seconds": ["Must be an integer between 1 and 86400."]},
        )


@transaction.atomic
def agent_create(
    *,
    name: str,
    by: Actor,
    description: str = "",
    owner: str = "",
    roles: Iterable[str] = (),
    max_hold_seconds: int = 50,
) -> Agent:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("An agent needs a name.", fields={"name": ["This field is required."]})
    _check_max_hold(max_hold_seconds)
    role_objs = _roles_by_name(roles)
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                name=name, description=description, owner=owner, max_hold_seconds=max_hold_seconds
            )
    except IntegrityError:
        raise InvalidInput(f"An agent named {name!r} already exists.", fields={"name": ["Already taken."]}) from None
    agent.roles.set(role_objs)
    audit_admin(
        by=by,
        operation="agent.create",
        agent=agent,
        target=f"agent:{agent.pk}",
        details={"owner": owner, "roles": [r.name for r in role_objs], "max_hold_seconds": max_hold_seconds},
    )
    return agent


@transaction.atomic
def agent_update(*, agent: Agent, by: Actor, roles: Iterable[str] | None = None, **fields) -> Agent:
    """Change an agent's descriptive fields and roles. Status changes use suspend/reactivate."""
    unknown = set(fields) - AGENT_EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(
            f"Cannot change {', '.join(sorted(unknown))} here.", fields={f: ["Not editable."] for f in unknown}
        )
    if "max_hold_seconds" in fields:
        _check_max_hold(fields["max_hold_seconds"])
    if "name" in fields:
        fields["name"] = (fields["name"] or "").strip()
        if not fields["name"]:
            raise InvalidInput("An agent needs a name.", fields={"name": ["This field is required."]})
        if Agent.objects.filter(name=fields["name"]).exclude(pk=agent.pk).exists():
            raise InvalidInput(
                f"An agent named {fields['name']!r} already exists.", fields={"name": ["Already taken."]}
            )
    for key, value in fields.items():
        setattr(agent, key, value)
    agent.save()
    changes = dict(fields)
    if roles is not None:
        role_objs = _roles_by_name(roles)
        agent.roles.set(role_objs)
        changes["roles"] = [r.name for r in role_objs]
    audit_admin(by=by, operation="agent.update", agent=agent, target=f"agent:{agent.pk}", details=changes)
    return agent


@transaction.atomic
def agent_suspend(*, agent: Agent, by: Actor, reason: str = "") -> Agent:
    """Suspend an agent and end every open session of it.

    1. Flip status with a conditional UPDATE, so two concurrent suspends do not both "win".
    2. End all its open sessions in the same transaction: after commit no process can find one.
    The proxy re-reads agent status at least every second, so in-flight processes refuse the agent
    on its next request.
    """
    now = timezone.now()
    changed = Agent.objects.filter(pk=agent.pk, status=AgentStatus.ACTIVE).update(
        status=AgentStatus.SUSPENDED, suspended_at=now, suspended_reason=reason or "", updated_at=now
    )
    if not changed:
        raise Conflict(f"Agent {agent.name!r} is already suspended.")
    ended = AgentSession.objects.filter(agent=agent, ended_at__isnull=True).update(
        ended_at=now, end_reason="agent suspended"
    )
    agent.refresh_from_db()
    from escalations.services import escalation_cancel_for_agent  # escalations depend on agents, not back

    cancelled = escalation_cancel_for_agent(agent=agent, reason="The agent was suspended.")
    audit_admin(
        by=by,
        operation="agent.suspend",
        agent=agent,
        target=f"agent:{agent.pk}",
        reason=reason,
        details={"sessions_ended": ended, "escalations_cancelled": cancelled},
    )
    return agent


@transaction.atomic
def agent_reactivate(*, agent: Agent, by: Actor) -> Agent:
    now = timezone.now()
    changed = Agent.objects.filter(pk=agent.pk, status=AgentStatus.SUSPENDED).update(
        status=AgentStatus.ACTIVE, suspended_at=None, suspended_reason="", updated_at=now
    )
    if not changed:
        raise Conflict(f"Agent {agent.name!r} is not suspended.")
    agent.refresh_from_db()
    audit_admin(by=by, operation="agent.reactivate", agent=agent, target=f"agent:{agent.pk}")
    return agent


@dataclass(frozen=True)
class EndedSession:
    """A session Behavry just ended, with what a DELETE of the upstream session behind it needs."""

    id: str
    server_id: int
    upstream_session_id: str
    upstream_protocol_version: str


_ENDED_FIELDS = ("pk", "server_id", "upstream_session_id", "upstream_protocol_version")


@transaction.atomic
def agent_session_open(
    *,
    agent_id: int,
    server_id: int,
    era: str,
    protocol_version: str,
    client_info: dict,
    upstream_session_id: str = "",
    upstream_protocol_version: str = "",
    upstream_info: dict | None = None,
    session_id: str | None = None,
) -> tuple[AgentSession, list[EndedSession]]:
    """Start (or, for a fixed bridge id, restart) a session Behavry tracks for an agent on one upstream.

    The agent keeps at most BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT open sessions on this upstream: past
    that, its least recently seen ones end (`end_reason="evicted"`) and are returned, so the caller
    can end the upstream sessions behind them. A client that never sends DELETE keeps working and
    cannot hold more than the cap. Two opens at the same moment may each leave one session over it,
    until the next open.
    """
    now = timezone.now()
    values = {
        "agent_id": agent_id,
        "server_id": server_id,
        "era": era,
        "protocol_version": protocol_version,
        "client_info": client_info,
        "upstream_session_id": upstream_session_id,
        "upstream_protocol_version": upstream_protocol_version,
        "upstream_info": upstream_info or {},
        "ended_at": None,
        "end_reason": "",
        "last_seen_at": now,
    }
    if session_id is None:
        session = AgentSession.objects.create(id=secrets.token_urlsafe(24), **values)
    else:
        session, _ = AgentSession.objects.update_or_create(id=session_id, defaults=values)
    keep = settings.BEHAVRY_MCP_MAX_SESSIONS_PER_AGENT - 1  # besides the new one
    over = [
        EndedSession(*row)
        for row in AgentSession.objects.filter(agent_id=agent_id, server_id=server_id, ended_at__isnull=True)
        .exclude(pk=session.pk)
        .order_by("-last_seen_at", "-created_at", "-pk")
        .values_list(*_ENDED_FIELDS)[keep:]
    ]
    if over:
        AgentSession.objects.filter(pk__in=[s.id for s in over], ended_at__isnull=True).update(
            ended_at=now, end_reason="evicted"
        )
    return session, over


def agent_session_set_upstream(
    *, session: AgentSession, upstream_session_id: str, upstream_protocol_version: str, upstream_info: dict
) -> None:
    """The upstream (2025-era) session behind this one, and what its initialize declared
    (capabilities, instructions), which a 2025 agent's own initialize answers with."""
    AgentSession.objects.filter(pk=session.pk).update(
        upstream_session_id=upstream_session_id,
        upstream_protocol_version=upstream_protocol_version,
        upstream_info=upstream_info,
    )
    session.upstream_session_id = upstream_session_id
    session.upstream_protocol_version = upstream_protocol_version
    session.upstream_info = upstream_info


def agent_session_end(*, session_id: str, reason: str) -> bool:
    return bool(
        AgentSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
            ended_at=timezone.now(), end_reason=reason
        )
    )


def agent_session_touch(*, session_ids: Collection[str], now: datetime | None = None) -> int:
    """Mark these open sessions as seen now, except those already seen in the last
    SESSION_TOUCH_SECONDS: one conditional UPDATE, so a second touch inside that window, from
    this process or another, writes nothing. Returns how many rows moved."""
    now = now or timezone.now()
    return AgentSession.objects.filter(
        pk__in=session_ids,
        ended_at__isnull=True,
        last_seen_at__lte=now - timedelta(seconds=SESSION_TOUCH_SECONDS),
    ).update(last_seen_at=now)


def agent_session_expire_idle(*, limit: int = SESSION_EXPIRY_BATCH) -> list[EndedSession]:
    """End up to `limit` open sessions unused for BEHAVRY_MCP_SESSION_IDLE_SECONDS
    (`end_reason="idle"`), stalest first, and return them; bridge sessions of 2026 agents count too.

    1. Pick them by `last_seen_at` older than the idle limit plus SESSION_TOUCH_SECONDS, since
       `last_seen_at` may lag a session's last request by that much (agent_session_touch): a
       session used within the limit is never ended.
    2. Claim them in one conditional UPDATE (still open, still that stale), stamped with this
       run's time: one touched meanwhile, or ended by an overlapping run, is left alone.
    3. Read back the ones this run ended, so each upstream session gets one DELETE.
    A request on an ended session gets 404, and the client initializes a new one.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.BEHAVRY_MCP_SESSION_IDLE_SECONDS + SESSION_TOUCH_SECONDS)
    stale = AgentSession.objects.filter(ended_at__isnull=True, last_seen_at__lt=cutoff)
    ids = list(stale.order_by("last_seen_at").values_list("pk", flat=True)[:limit])
    if not ids:
        return []
    stale.filter(pk__in=ids).update(ended_at=now, end_reason="idle")
    claimed = AgentSession.objects.filter(pk__in=ids, ended_at=now, end_reason="idle")
    return [EndedSession(*row) for row in claimed.values_list(*_ENDED_FIELDS)]


def agent_session_purge_ended(*, before: datetime, limit: int = SESSION_EXPIRY_BATCH) -> int:
    """Delete up to `limit` sessions that ended before `before`, oldest first; returns how many.
    Open sessions are never touched. Nothing refers to a session row (the audit trail names a
    session by its id in an event's details), so this deletes nothing else."""
    ids = list(
        AgentSession.objects.filter(ended_at__lt=before).order_by("ended_at").values_list("pk", flat=True)[:limit]
    )
    if not ids:
        return 0
    deleted, _by_model = AgentSession.objects.filter(pk__in=ids, ended_at__lt=before).delete()
    return deleted


@transaction.atomic
def agent_token_issue(*, agent: Agent, by: Actor, label: str = "") -> tuple[AgentToken, str]:
    """Issue a new token; the raw value is returned once and never stored."""
    secret = secret_generate(AGENT_TOKEN_KIND)
    token = AgentToken.objects.create(
        agent=agent, label=(label or "").strip()[:100], prefix=secret.prefix, token_hash=secret.digest
    )
    audit_admin(
        by=by,
        operation="agent_token.issue",
        agent=agent,
        target=f"agent_token:{token.pk}",
        details={"prefix": token.prefix, "label": token.label},
    )
    return token, secret.raw


@transaction.atomic
def agent_token_revoke(*, token: AgentToken, by: Actor) -> AgentToken:
    changed = AgentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if not changed:
        raise Conflict(f"Token {token.prefix}… is already revoked.")
    token.refresh_from_db()
    audit_admin(
        by=by,
        operation="agent_token.revoke",
        agent=token.agent,
        target=f"agent_token:{token.pk}",
        details={"prefix": token.prefix},
    )
    return token


@transaction.atomic
def agent_delete(*, agent: Agent, by: Actor) -> None:
    """Remove an agent with its tokens, sessions, exceptions and escalations.

    Only a suspended agent can be deleted, so nothing is cut off mid-call by surprise: suspending
    first ends its sessions and cancels its pending escalations. The audit trail keeps its events
    (they store the id and name, not a foreign key) and records the deletion.
    """
    if agent.status != AgentStatus.SUSPENDED:
        raise Conflict(f"Agent {agent.name!r} is active; suspend it before deleting it.")
    agent_id, name = agent.pk, agent.name
    agent.delete()
    audit_admin(by=by, operation="agent.delete", target=f"agent:{agent_id}", details={"name": name})
