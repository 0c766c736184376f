"""State changes of upstream servers and the tool catalog."""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput
from proxy.catalog import (
    storable_problem,
    tool_default_action,
    tool_definition_hash,
    tool_resource_argument,
    upstream_url_problem,
)
from proxy.models import Tool, ToolAction, UpstreamServer

logger = logging.getLogger("behavry.proxy.catalog")

SERVER_EDITABLE_FIELDS = {
    "name",
    "url",
    "auth_header_name",
    "auth_header_value",
    "enabled",
    "connect_timeout",
    "read_timeout",
}


def _describe(fields: dict[str, Any]) -> dict[str, Any]:
    """Server changes for the audit trail: the upstream credential is named, never recorded."""
    return {k: ("(changed)" if k == "auth_header_value" else v) for k, v in fields.items()}


def _validate_server(server: UpstreamServer) -> None:
    from django.core.exceptions import ValidationError

    fields: dict[str, list[str]] = {}
    try:
        server.full_clean(exclude=["slug", "url"] if server.pk else ["url"], validate_unique=False)
    except ValidationError as exc:
        fields.update(exc.message_dict)
    problem = upstream_url_problem(server.url)
    if problem:
        fields["url"] = [problem]
    if fields:
        raise InvalidInput("Invalid upstream server.", fields=fields)


@transaction.atomic
def upstream_server_create(*, slug: str, name: str, url: str, by: Actor, **fields: Any) -> UpstreamServer:
    unknown = set(fields) - SERVER_EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(
            f"Unknown field(s) {', '.join(sorted(unknown))}.", fields={f: ["Unknown field."] for f in unknown}
        )
    server = UpstreamServer(slug=slug, name=name, url=url, **fields)
    _validate_server(server)
    try:
        with transaction.atomic():
            server.save()
    except IntegrityError:
        raise InvalidInput(f"A server with slug {slug!r} exists.", fields={"slug": ["Already taken."]}) from None
    audit_admin(
        by=by,
        operation="server.create",
        target=f"server:{slug}",
        details=_describe({"name": name, "url": url, **fields}),
    )
    return server


@transaction.atomic
def upstream_server_update(*, server: UpstreamServer, by: Actor, **fields: Any) -> UpstreamServer:
    unknown = set(fields) - SERVER_EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(
            f"Cannot change {', '.join(sorted(unknown))}.", fields={f: ["Not editable."] for f in unknown}
        )
    before = {key: getattr(server, key) for key in fields}
    # The stored URL, not the instance's: the admin's form has already set the new one on it.
    stored_url = UpstreamServer.objects.filter(pk=server.pk).values_list("url", flat=True).first()
    for key, value in fields.items():
        setattr(server, key, value)
    _validate_server(server)
    if server.url != stored_url:
        from proxy.models import UpstreamEra

        # Another URL may be another server, of another era: detected again on the next request.
        server.era = UpstreamEra.UNKNOWN
        server.protocol_version = ""
    server.save()
    changed = {k: v for k, v in fields.items() if before[k] != v}
    if changed:
        audit_admin(by=by, operation="server.update", target=f"server:{server.slug}", details=_describe(changed))
    return server


class _LeftOut(Exception):
    """A listed tool the catalog cannot hold. It is left out of the catalog, and so not offered to
    agents (proxy/handlers.py lists only tools the sync returned)."""


_NAME_MAX = Tool._meta.get_field("name").max_length or 0
_TITLE_MAX = Tool._meta.get_field("title").max_length or 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _catalog_values(definition: Any) -> tuple[str, dict[str, Any], str]:
    """One listed tool's name, catalog fields and resource argument; raises _LeftOut.

    Everything here comes from the upstream, untrusted, and is checked before anything is written:
    a row the database refused would abort the whole sync, and every agent would be listed nothing.
    """
    if not isinstance(definition, dict):
        raise _LeftOut("the definition is not an object")
    name = definition.get("name")
    if not isinstance(name, str) or not name:
        raise _LeftOut("it has no name, or one that is not a string")
    if len(name) > _NAME_MAX:
        raise _LeftOut(f"its name is longer than {_NAME_MAX} characters")
    # A malformed part counts as empty for the derived fields; the definition hash below still
    # covers what the upstream sent, so a change to that part is detected all the same.
    annotations = _object(definition.get("annotations"))
    schema = _object(definition.get("inputSchema"))
    values: dict[str, Any] = {
        "title": (_text(definition.get("title")) or _text(annotations.get("title")))[:_TITLE_MAX],
        "description": _text(definition.get("description")),
        "input_schema": schema,
        "annotations": annotations,
    }
    problem = storable_problem([name, values])
    if problem:
        raise _LeftOut(f"it cannot be stored: {problem}")
    values["default_action"] = tool_default_action(name, annotations)
    values["definition_hash"] = tool_definition_hash(definition)
    return name, values, tool_resource_argument(schema)


def _shown_name(definition: Any) -> str:
    """A listed tool's name for the log: cut short (an upstream chooses its length), repr'd (and
    so on one line), or the type of what stands in its place."""
    if not isinstance(definition, dict):
        return f"({type(definition).__name__})"
    name = definition.get("name")
    if isinstance(name, str):
        return repr(name[:60]) + ("..." if len(name) > 60 else "")
    return f"({type(name).__name__})"


@transaction.atomic
def tool_catalog_sync(*, server: UpstreamServer, definitions: list[dict[str, Any]]) -> list[Tool]:
    """Record the tools an upstream listed. Returns the Tool rows of the tools it could record, in
    the order given; a tool it cannot record is logged and left out.

    Admin-set fields (`action_override`, a customised `resource_argument`) survive a re-sync; the
    derived fields are recomputed from the new definition.
    """
    now = timezone.now()
    tools = []
    for definition in definitions:
        try:
            name, values, resource_argument = _catalog_values(definition)
        except _LeftOut as left_out:
            logger.warning(
                "Upstream %s lists tool %s, left out of the catalog and not offered to agents: %s",
                server.slug,
                _shown_name(definition),
                left_out,
            )
            continue
        values["last_seen_at"] = now
        tool, created = Tool.objects.get_or_create(
            server=server, name=name, defaults={**values, "resource_argument": resource_argument}
        )
        if not created:
            for key, value in values.items():
                setattr(tool, key, value)
            if not tool.resource_argument:
                tool.resource_argument = resource_argument
            tool.save()
        tools.append(tool)
    return tools


@transaction.atomic
def tool_update(
    *, tool: Tool, by: Actor, action_override: str | None = None, resource_argument: str | None = None
) -> Tool:
    """An admin's correction of how a tool is classified."""
    if action_override is not None:
        if action_override and action_override not in ToolAction.values:
            raise InvalidInput(
                "Unknown action.", fields={"action_override": [f"Choose one of: {', '.join(ToolAction.values)}."]}
            )
        tool.action_override = action_override
    if resource_argument is not None:
        tool.resource_argument = resource_argument.strip()
    tool.save()
    audit_admin(
        by=by,
        operation="tool.update",
        target=f"tool:{tool.server.slug}/{tool.name}",
        details={"action_override": tool.action_override, "resource_argument": tool.resource_argument},
    )
    return tool


def upstream_server_set_era(*, server_id: int, era: str, protocol_version: str, url: str | None = None) -> None:
    """Remember which protocol era an upstream speaks (detected by the proxy, not an admin action).
    With `url`, only while the server still has that URL: a detection that ran against the old URL
    while an admin changed it must not stick to the new one."""
    rows = UpstreamServer.objects.filter(pk=server_id)
    if url is not None:
        rows = rows.filter(url=url)
    rows.update(era=era, protocol_version=protocol_version)


@transaction.atomic
def upstream_server_delete(*, server: UpstreamServer, by: Actor) -> None:
    """Remove an upstream and its tool catalog. It must be disabled first, so no agent is cut off
    mid-session by a typo; disabling is also the reversible choice."""
    if server.enabled:
        raise Conflict(f"Server {server.slug!r} is enabled; disable it before deleting it.")
    slug = server.slug
    server.delete()
    audit_admin(by=by, operation="server.delete", target=f"server:{slug}")
