"""factory_boy factories. Personas for people are in conftest (admin, approver, viewer, outsider)."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from agents.models import Agent, AgentSession, Role
from alerts.models import Alert, AlertSeverity, AlertType
from proxy.models import UpstreamServer


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"person{n}")
    password = factory.django.Password("correct horse battery staple")
    is_staff = True


class RoleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Role
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"role-{n}")


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"agent-{n}")
    owner = "team-a"


class UpstreamServerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = UpstreamServer

    slug = factory.Sequence(lambda n: f"server-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    url = "http://127.0.0.1:9/mcp"


class AgentSessionFactory(factory.django.DjangoModelFactory):
    """An open 2025-era session, seen now unless `last_seen_at` says otherwise."""

    class Meta:
        model = AgentSession

    id = factory.Sequence(lambda n: f"session-{n}")
    agent = factory.SubFactory(AgentFactory)
    server = factory.SubFactory(UpstreamServerFactory)


class AlertFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Alert

    type = AlertType.ANOMALY
    severity = AlertSeverity.WARNING
    title = factory.Sequence(lambda n: f"alert {n}")
