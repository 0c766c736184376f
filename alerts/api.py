"""REST API for alerts: list and read (viewer), acknowledge and resolve (approver)."""

from __future__ import annotations

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.permissions import IsApprover, IsViewer
from alerts.models import Alert, AlertNote, AlertSeverity, AlertStatus, AlertType
from alerts.services import alert_acknowledge, alert_resolve
from behavry.api import request_actor, validated
from behavry.filters import UtcIsoDateTimeFilter


class AlertNoteSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertNote
        fields = ["author", "action", "text", "created_at"]
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True, allow_null=True, default=None)
    notes = AlertNoteSerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "agent",
            "agent_name",
            "type",
            "severity",
            "status",
            "title",
            "details",
            "occurrences",
            "created_at",
            "last_seen_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "false_positive",
            "notes",
        ]
        read_only_fields = fields


class AcknowledgeSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=5000, help_text="What you checked or are doing about it.")


class ResolveSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")
    false_positive = serializers.BooleanField(
        required=False, default=False, help_text="Marks the alert as noise, which feeds threshold tuning."
    )


class AlertFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=AlertStatus.choices)
    severity = django_filters.ChoiceFilter(choices=AlertSeverity.choices)
    type = django_filters.ChoiceFilter(choices=AlertType.choices)
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["status", "severity", "type", "agent", "since"]


@extend_schema_view(list=extend_schema(summary="List alerts"), retrieve=extend_schema(summary="Get one alert"))
class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts, newest first. Alerts never block calls; people acknowledge and resolve them."""

    queryset = Alert.objects.select_related("agent").prefetch_related("notes")
    lookup_value_regex = "[0-9]+"
    serializer_class = AlertSerializer
    permission_classes = [IsViewer]
    filterset_class = AlertFilter

    @extend_schema(summary="Acknowledge an open alert", request=AcknowledgeSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsApprover])
    def acknowledge(self, request, pk=None):
        data = validated(AcknowledgeSerializer, request)
        alert = alert_acknowledge(alert=self.get_object(), by=request_actor(request), note=data["note"])
        return Response(AlertSerializer(alert).data)

    @extend_schema(summary="Resolve an alert", request=ResolveSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsApprover])
    def resolve(self, request, pk=None):
        data = validated(ResolveSerializer, request)
        alert = alert_resolve(
            alert=self.get_object(),
            by=request_actor(request),
            note=data["note"],
            false_positive=data["false_positive"],
        )
        return Response(AlertSerializer(alert).data)
