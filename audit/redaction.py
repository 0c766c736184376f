"""What an audit event may keep of a tool call's arguments.

Values of secret-looking keys are replaced, DLP matches are replaced by their finding type, long
strings and deep or wide structures are cut. The result is what gets hashed and stored; the raw
arguments never reach the audit table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

SECRET_KEY_PATTERN = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|authorization|credential|private[_-]?key|cookie|session[_-]?id)",
    re.IGNORECASE,
)
MAX_STRING = 4096
MAX_ITEMS = 500
MAX_DEPTH = 16


def clean_text(value: str) -> str:
    """Strip what PostgreSQL text cannot hold: NUL and unpaired surrogates."""
    if value.isascii():  # the usual case: no surrogates possible, no UTF-8 copy needed to know it
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def redact_arguments(arguments: Any, findings: Iterable[dict[str, Any]] = ()) -> Any:
    """A copy of `arguments` safe to store. `findings` are DLP matches: {"type", "value"}."""
    if arguments.__class__ in (dict, list) and not arguments:
        return arguments.__class__()  # nothing to redact: most traces and details
    matches = (
        sorted(
            ((str(f["value"]), str(f.get("type", "secret"))) for f in findings if f.get("value")),
            key=lambda item: -len(item[0]),
        )
        if findings
        else []
    )
    return _redact(arguments, matches, 0)


@lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """SECRET_KEY_PATTERN.search, remembered: the same few keys come back on every call, and the
    case-insensitive search over every alternative is the costliest step of redacting them."""
    return SECRET_KEY_PATTERN.search(key) is not None


def _redact(value: Any, matches: list[tuple[str, str]], depth: int) -> Any:
    if depth > MAX_DEPTH:
        return "[truncated: nested too deeply]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= MAX_ITEMS:
                out["…"] = f"[truncated: {len(value) - MAX_ITEMS} more keys]"
                break
            key = clean_text(str(key))[:200]
            if _secret_key(key) and item not in (None, "", [], {}):
                out[key] = "[redacted]"
            else:
                out[key] = _redact(item, matches, depth + 1)
        return out
    if isinstance(value, list | tuple):
        items = [_redact(item, matches, depth + 1) for item in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"[truncated: {len(value) - MAX_ITEMS} more items]")
        return items
    if isinstance(value, str):
        value = clean_text(value)
        for raw, kind in matches:
            if raw in value:
                value = value.replace(raw, f"[redacted:{kind}]")
        if len(value) > MAX_STRING:
            value = f"{value[:MAX_STRING]}…[truncated: {len(value) - MAX_STRING} more characters]"
        return value
    if isinstance(value, bool | int | float) or value is None:
        return value
    return clean_text(str(value))[:MAX_STRING]
