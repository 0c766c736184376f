"""REST API for escalations: list, approve, deny, bulk. Deciding needs the approver role."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.permissions import IsApprover, IsViewer
from behavry.api import MAX_ID, request_actor, validated
from behavry.errors import Conflict
from escalations.models import Escalation
from escalations.notify import notify_batch
from escalations.services import escalation_approve, escalation_deny


class EscalationSerializer(serializers.ModelSerializer):
    agent_name = serializers.CharField(source="agent.name", read_only=True)

    class Meta:
        model = Escalation
        fields = [
            "id",
            "status",
            "agent",
            "agent_name",
            "server",
            "tool",
            "action",
            "resource",
            "arguments",
            "policy_id",
            "reason",
            "risk_tier",
            "created_at",
            "deadline",
            "decided_at",
            "decided_by",
            "note",
            "create_exception",
            "exception_id",
            "forwarded_at",
        ]
        read_only_fields = fields


class DecisionSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    create_exception = serializers.BooleanField(
        required=False, default=False, help_text="On approve: allow this exact call from now on. Must be false on deny."
    )


class BulkSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1, max_length=10_000
    )
    decision = serializers.ChoiceField(choices=["approve", "deny"])
    note = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    create_exception = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        if attrs["decision"] == "deny" and attrs["create_exception"]:
            raise serializers.ValidationError({"create_exception": ["Only an approval can create an exception."]})
        return attrs


class BulkItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    result = serializers.ChoiceField(choices=["approved", "denied", "conflict", "not_found"])
    message = serializers.CharField(required=False)


class BulkResultSerializer(serializers.Serializer):
    decided = serializers.IntegerField()
    results = BulkItemSerializer(many=True)


@extend_schema_view(
    list=extend_schema(summary="List escalations"), retrieve=extend_schema(summary="Get one escalation")
)
class EscalationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Escalations, newest first. `?status=pending` is the approver's queue."""

    queryset = Escalation.objects.select_related("agent")
    lookup_value_regex = "[0-9]+"
    serializer_class = EscalationSerializer
    permission_classes = [IsViewer]
    filterset_fields = ["status", "agent", "server", "tool", "risk_tier"]

    @extend_schema(
        summary="Approve a pending escalation",
        description="Releases the held call to the upstream. `create_exception` also allows this exact "
        "(agent, server, tool, resource) from now on without review; it never overrides a deny rule.",
        request=DecisionSerializer,
        responses=EscalationSerializer,
    )
    @action(detail=True, methods=["post"], permission_classes=[IsApprover])
    def approve(self, request, pk=None):
        data = validated(DecisionSerializer, request)
        escalation = escalation_approve(
            escalation=self.get_object(),
            by=request_actor(request),
            note=data["note"],
            create_exception=data["create_exception"],
        )
        return Response(EscalationSerializer(escalation).data)

    @extend_schema(
        summary="Deny a pending escalation",
        description="The held call gets a policy error; the agent's session stays active.",
        request=DecisionSerializer,
        responses=EscalationSerializer,
    )
    @action(detail=True, methods=["post"], permission_classes=[IsApprover])
    def deny(self, request, pk=None):
        data = validated(DecisionSerializer, request)
        if data["create_exception"]:
            raise serializers.ValidationError({"create_exception": ["Only an approval can create an exception."]})
        escalation = escalation_deny(escalation=self.get_object(), by=request_actor(request), note=data["note"])
        return Response(EscalationSerializer(escalation).data)

    @extend_schema(
        summary="Approve or deny many escalations",
        description="Each id is decided on its own; ids already decided or unknown are reported per id.",
        request=BulkSerializer,
        responses=BulkResultSerializer,
    )
    @action(detail=False, methods=["post"], permission_classes=[IsApprover])
    def bulk(self, request):
        data = validated(BulkSerializer, request)
        by = request_actor(request)
        found = {e.pk: e for e in Escalation.objects.filter(pk__in=data["ids"]).select_related("agent")}
        results = []
        with notify_batch(), transaction.atomic():
            self._decide_each(data, by, found, results)
        decided = sum(1 for r in results if r["result"] in ("approved", "denied"))
        return Response({"decided": decided, "results": results}, status=status.HTTP_200_OK)

    @staticmethod
    def _decide_each(data: dict, by, found: dict, results: list) -> None:
        """Each escalation in its own savepoint: one that is already decided does not undo the rest,
        and the whole batch commits once."""
        for escalation_id in dict.fromkeys(data["ids"]):
            escalation = found.get(escalation_id)
            if escalation is None:
                results.append({"id": escalation_id, "result": "not_found"})
                continue
            try:
                if data["decision"] == "approve":
                    escalation_approve(
                        escalation=escalation, by=by, note=data["note"], create_exception=data["create_exception"]
                    )
                else:
                    escalation_deny(escalation=escalation, by=by, note=data["note"])
                results.append(
                    {"id": escalation_id, "result": {"approve": "approved", "deny": "denied"}[data["decision"]]}
                )
            except Conflict as exc:
                results.append({"id": escalation_id, "result": "conflict", "message": exc.message})
