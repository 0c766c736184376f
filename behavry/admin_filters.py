"""Admin list filters that stay fast on tables of millions of rows.

Django's default filter for a plain CharField (and `date_hierarchy`) runs `SELECT DISTINCT` over the
whole table on every changelist load to find the values to offer. On the audit trail or the
escalation history that is a full scan per page view. These filters offer a fixed list instead (the
known values, or the upstream servers, a table of a handful of rows) and filter with an index-friendly
equality or range.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone


def values_filter(field: str, title: str, choices) -> type[admin.SimpleListFilter]:
    """A filter on `field` offering `choices` ((value, label) pairs or a TextChoices class)."""
    pairs = list(choices.choices if hasattr(choices, "choices") else choices)

    class ValuesFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request, model_admin):
            return pairs

        def queryset(self, request, queryset):
            value = self.value()
            # Only offered values reach the database: anything else (a NUL, say) would be a driver error.
            return queryset.filter(**{field: value}) if value in dict(pairs) else queryset

    ValuesFilter.title = title
    ValuesFilter.__name__ = f"{field.title().replace('_', '')}ValuesFilter"
    return ValuesFilter


class ServerSlugFilter(admin.SimpleListFilter):
    """Rows whose `server` text column names an upstream server, offered from UpstreamServer."""

    title = "server"
    parameter_name = "server"

    def lookups(self, request, model_admin):
        from proxy.models import UpstreamServer

        return list(UpstreamServer.objects.order_by("slug").values_list("slug", "slug"))

    def queryset(self, request, queryset):
        value = self.value()
        if not value or not any(value == slug for slug, _ in self.lookup_choices):
            return queryset
        return queryset.filter(server=value)


RECENT_WINDOWS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


def recent_filter(field: str, title: str = "when") -> type[admin.SimpleListFilter]:
    """Rows whose `field` falls in the last hour/day/week/month: one index range, no DISTINCT."""

    class RecentFilter(admin.SimpleListFilter):
        parameter_name = f"{field}_within"

        def lookups(self, request, model_admin):
            return [("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days")]

        def queryset(self, request, queryset):
            window = RECENT_WINDOWS.get(self.value() or "")
            if window is None:
                return queryset
            return queryset.filter(**{f"{field}__gte": timezone.now() - window})

    RecentFilter.title = title
    RecentFilter.__name__ = f"{field.title().replace('_', '')}RecentFilter"
    return RecentFilter
