"""State changes of upstream servers and the tool catalog."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_admin
from behavry.actors import Actor
from behavry.errors import Conflict, InvalidInput
from proxy.catalog import tool_default_action, tool_definition_hash, tool_resource_argument, upstream_url_problem
from proxy.models import Tool, ToolAction, UpstreamServer

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


@transaction.atomic
def tool_catalog_sync(*, server: UpstreamServer, definitions: list[dict[str, Any]]) -> list[Tool]:
    """Record the tools an upstream listed. Returns the Tool rows, in the order given.

    Admin-set fields (`action_override`, a customised `resource_argument`) survive a re-sync; the
    derived fields are recomputed from the new definition.
    """
    now = timezone.now()
    tools = []
    for definition in definitions:
        name = definition.get("name")
        if not isinstance(name, str) or not name:
            continue
        annotations = definition.get("annotations") or {}
        schema = definition.get("inputSchema") or {}
        values = {
            "title": (definition.get("title") or annotations.get("title") or "")[:200],
            "description": definition.get("description") or "",
            "input_schema": schema,
            "annotations": annotations,
            "default_action": tool_default_action(name, annotations),
            "definition_hash": tool_definition_hash(definition),
            "last_seen_at": now,
        }
        tool, created = Tool.objects.get_or_create(
            server=server, name=name, defaults={**values, "resource_argument": tool_resource_argument(schema)}
        )
        if not created:
            for key, value in values.items():
                setattr(tool, key, value)
            if not tool.resource_argument:
                tool.resource_argument = tool_resource_argument(schema)
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
