"""Query-string filters shared by the API's FilterSets."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, converted to UTC before it reaches the database.

    Python accepts UTC offsets up to ±23:59 but PostgreSQL only up to ±15:59, so `+18:41` passed
    through unchanged is a driver error (a 500) on PostgreSQL and fine on SQLite. In UTC it is the
    same instant on both; an instant that has no UTC form (year 1 at +18:00) is a field error.
    """

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("The date and time is out of range.", code="invalid") from None


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField
