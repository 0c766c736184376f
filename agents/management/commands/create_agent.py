from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from agents.services import agent_create, agent_token_issue, role_create
from behavry.actors import Actor
from behavry.errors import DomainError

CLI = Actor(kind="system", id="cli", name="manage.py")


class Command(BaseCommand):
    help = "Create an agent and print its id and a new bearer token (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--role", action="append", default=[], help="Agent role (repeatable); created if missing.")
        parser.add_argument("--owner", default="")
        parser.add_argument("--description", default="")
        parser.add_argument("--max-hold-seconds", type=int, default=50)

    def handle(self, *args, name, role, owner, description, max_hold_seconds, **options):
        try:
            with transaction.atomic():
                for role_name in role:
                    role_create(name=role_name, by=CLI)
                agent = agent_create(
                    name=name,
                    roles=role,
                    owner=owner,
                    description=description,
                    max_hold_seconds=max_hold_seconds,
                    by=CLI,
                )
                _token, raw = agent_token_issue(agent=agent, label="created by create_agent", by=CLI)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"agent_id={agent.pk}\ntoken={raw}")
