"""The parser and paginator that settings.REST_FRAMEWORK names as DRF's defaults.

They live apart from `behavry.api` on purpose: that module imports `rest_framework.views`, whose
APIView reads DEFAULT_PARSER_CLASSES while its class body runs. Reading the setting first (the
system checks do, in no fixed order) would import `behavry.api` half-way and fail on the cycle.
So this module imports nothing from DRF that reads settings at import time.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, pagination
from rest_framework.parsers import JSONParser


class BoundedLimitOffsetPagination(pagination.LimitOffsetPagination):
    """`?limit=&offset=` with limits: a page is at most 1000 rows, and an offset past any real table
    is a 400 rather than a database error (SQLite cannot bind integers beyond 64 bits)."""

    default_limit = 100
    max_limit = 1000
    max_offset = 10**9

    def get_offset(self, request):
        raw = request.query_params.get(self.offset_query_param)
        if raw is not None:
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value > self.max_offset:
                raise exceptions.ValidationError({self.offset_query_param: [f"At most {self.max_offset}."]})
        return super().get_offset(request)


def _unstorable_text(value: Any, depth: int = 0) -> str | None:
    """The first JSON string that no database column can hold, described, or None."""
    if depth > 64:
        return "The body is nested too deeply (more than 64 levels)."
    if isinstance(value, str):
        if "\x00" in value:
            return "Text must not contain NUL (\\u0000) characters."
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "Text must be valid Unicode (it contains an unpaired surrogate such as \\ud800)."
        return None
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        problem = _unstorable_text(item, depth + 1)
        if problem:
            return problem
    return None


class StrictJSONParser(JSONParser):
    """JSON, refusing text PostgreSQL cannot store (NUL, lone surrogates) with a 400 up front.

    Otherwise such a string is accepted on SQLite and turns into a driver error deep in a write on
    PostgreSQL; both backends must answer the same, and nothing may half-happen.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        problem = _unstorable_text(data)
        if problem:
            raise exceptions.ParseError(problem)
        return data
