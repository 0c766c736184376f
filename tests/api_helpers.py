"""Small helpers for REST API tests: send JSON with a key, and unwrap the one error shape."""

from __future__ import annotations

import json
from typing import Any


def send(client, method: str, path: str, key: str | None = None, body: Any = None, **extra):
    """A request with an optional API key; a body is sent as JSON, no body sends no Content-Type."""
    if key:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    if body is None:
        return client.generic(method.upper(), path, **extra)
    return client.generic(method.upper(), path, json.dumps(body), content_type="application/json", **extra)


def ok(response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.content[:500])
    return response.json() if response.content else None


def error(response, status: int) -> dict:
    """The `error` object of a 4xx answer, after checking the shape."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    return body["error"]
