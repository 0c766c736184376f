"""JSON stored as canonical text, exactly as it was hashed.

jsonb (and SQLite's JSON functions) reorder keys and reformat numbers, so the hashed form could
only be rebuilt by parsing and re-serialising every column on every verification. Keeping the
canonical text itself makes the stored bytes the hash input: verification concatenates, it does
not parse. Reads through the ORM still get Python objects.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models


class CanonicalJSONField(models.TextField):
    description = "JSON kept as canonical text (sorted keys, no whitespace)"

    def from_db_value(self, value, expression, connection):
        if value is None:
            return value
        return json.loads(value)

    def to_python(self, value):
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def get_prep_value(self, value: Any):
        from audit.chain import canonical_json

        if value is None:
            return None
        return canonical_json(value)

    def value_to_string(self, obj):
        return self.get_prep_value(self.value_from_object(obj))
