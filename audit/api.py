"""REST API for the audit trail: list with filters, streamed CSV/JSONL export, verification."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import django_filters
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from audit.chain import HASHED_FIELDS, JSON_FIELDS
from audit.models import AuditEvent, AuditKind
from audit.selectors import audit_event_batches_async
from audit.verify import audit_verify
from behavry.filters import UtcIsoDateTimeFilter

# Everything needed to re-verify an export offline: the hashed fields plus both hashes.
EXPORT_COLUMNS = ("id", *HASHED_FIELDS, "previous_hash", "event_hash")
JSON_COLUMNS = set(JSON_FIELDS)


class AuditEventSerializer(serializers.ModelSerializer):
    agent = serializers.IntegerField(source="agent_id", allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "timestamp",
            "kind",
            "agent",
            "agent_name",
            "session",
            "server",
            "tool",
            "action",
            "resource",
            "decision",
            "policy_id",
            "reason",
            "request_id",
            "actor",
            "latency_ms",
            "arguments",
            "trace",
            "dlp_findings",
            "details",
            "chain",
            "seq",
            "previous_hash",
            "event_hash",
        ]


class BrokenLinkSerializer(serializers.Serializer):
    chain = serializers.CharField()
    reason = serializers.CharField()
    event_id = serializers.IntegerField(allow_null=True)
    seq = serializers.IntegerField(allow_null=True)


class VerifyResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.ChoiceField(choices=["ok", "broken"])
    chains_checked = serializers.IntegerField()
    events_checked = serializers.IntegerField()
    seconds = serializers.FloatField()
    first_broken = BrokenLinkSerializer(allow_null=True, help_text="The first tampered link found, if any.")
    checkpoints = serializers.DictField(
        child=serializers.IntegerField(), help_text="Per chain, the seq up to which retention removed events."
    )


_EXPORT_PARAMETER = OpenApiParameter(
    "format",
    str,
    enum=["csv", "jsonl"],
    required=False,
    description="Stream the whole filtered set as a file instead of a page. Includes both hashes, so it can be "
    "re-verified offline.",
)


class AuditEventFilter(django_filters.FilterSet):
    agent = django_filters.CharFilter(method="filter_agent", help_text="Agent id or exact name.")
    since = UtcIsoDateTimeFilter(field_name="timestamp", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="timestamp", lookup_expr="lt")
    kind = django_filters.ChoiceFilter(choices=AuditKind.choices)

    class Meta:
        model = AuditEvent
        fields = ["agent", "since", "until", "kind", "decision", "policy_id", "tool", "server", "action", "request_id"]

    def filter_agent(self, queryset, name, value):
        value = value.strip()
        if value.isascii() and value.isdigit():  # "²".isdigit() is True, int("²") is not
            return queryset.filter(agent_id=int(value))
        return queryset.filter(agent_name=value)


class AuditCursorPagination(CursorPagination):
    # Cursor, not offset: the table grows without bound and OFFSET N gets slower with N.
    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


async def _csv_lines(batches: AsyncIterator[list[dict]]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    async for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        for row in batch:
            writer.writerow(
                [
                    json.dumps(row[c], ensure_ascii=False, sort_keys=True)
                    if c in JSON_COLUMNS
                    else (row[c].isoformat() if c == "timestamp" else ("" if row[c] is None else row[c]))
                    for c in EXPORT_COLUMNS
                ]
            )
        yield buffer.getvalue()


async def _jsonl_lines(batches: AsyncIterator[list[dict]]) -> AsyncIterator[str]:
    async for batch in batches:
        yield "".join(
            json.dumps({**row, "timestamp": row["timestamp"].isoformat()}, ensure_ascii=False, sort_keys=True) + "\n"
            for row in batch
        )


@extend_schema_view(
    list=extend_schema(
        summary="List audit events, or export them",
        operation_id="audit_events_list",
        parameters=[_EXPORT_PARAMETER],
        responses={
            200: AuditEventSerializer(many=True),
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/x-ndjson"): OpenApiTypes.STR,
        },
    ),
    retrieve=extend_schema(summary="Get one audit event"),
)
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """Audit events, newest first. `?format=csv|jsonl` streams the filtered set as a file."""

    queryset = AuditEvent.objects.all()
    lookup_value_regex = "[0-9]+"
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    pagination_class = AuditCursorPagination

    def list(self, request, *args, **kwargs):
        export = request.query_params.get("format")
        if export is None:
            return super().list(request, *args, **kwargs)
        if export not in ("csv", "jsonl"):
            raise ValidationError({"format": ["Choose csv or jsonl."]})
        queryset = self.filter_queryset(self.get_queryset())
        batches = audit_event_batches_async(queryset, EXPORT_COLUMNS)
        if export == "csv":
            body, content_type = _csv_lines(batches), "text/csv; charset=utf-8"
        else:
            body, content_type = _jsonl_lines(batches), "application/x-ndjson; charset=utf-8"
        response = StreamingHttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="behavry-audit.{export}"'
        return response

    @extend_schema(
        summary="Verify the audit trail's hash chains",
        description="Re-hashes every event (or one agent's chain) and checks links, signed heads and "
        "checkpoints. `ok=false` names the first broken link.",
        parameters=[
            OpenApiParameter("agent", int, required=False, description="Only this agent's chain."),
            OpenApiParameter("since", OpenApiTypes.DATETIME, required=False, description="Start from here."),
        ],
        responses=VerifyResultSerializer,
    )
    @action(detail=False, methods=["get"], filter_backends=[], pagination_class=None)
    def verify(self, request):
        agent = request.query_params.get("agent")
        errors = {}
        if agent is not None and not (agent.isascii() and agent.isdigit()):
            errors["agent"] = ["Must be an agent id."]
        since = None
        if "since" in request.query_params:
            field = serializers.DateTimeField()
            try:
                since = field.to_internal_value(request.query_params["since"])
            except serializers.ValidationError as exc:
                errors["since"] = [str(m) for m in exc.detail]
        if errors:
            raise ValidationError(errors)
        result = audit_verify(agent_id=int(agent) if agent else None, since=since)
        return Response(result.as_dict())
