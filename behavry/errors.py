"""Domain errors raised by services.

The API's one exception handler maps these to `{"error": {"code", "message", "fields"}}` with the
status below; admin and console views show `message`. Services never return half-done work: they
raise before writing, or inside the transaction that would have written.
"""

from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fields = fields or {}


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    """The object is not in a state that allows this change (e.g. a second decision)."""

    status = 409
    code = "conflict"
