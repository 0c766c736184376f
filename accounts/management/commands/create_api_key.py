from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.roles import PersonRole
from accounts.services import api_key_create
from behavry.actors import Actor
from behavry.errors import DomainError


class Command(BaseCommand):
    help = "Create an API key for an integration and print only the key (it is not stored in clear)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", required=True, choices=PersonRole.values)
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after this many days.")

    def handle(self, *args, name, role, expires_days, **options):
        expires_at = None
        if expires_days is not None:
            if expires_days < 1:
                raise CommandError("--expires-days must be at least 1")
            expires_at = timezone.now() + timedelta(days=expires_days)
        try:
            _key, raw = api_key_create(
                name=name, role=role, expires_at=expires_at, by=Actor(kind="system", id="cli", name="manage.py")
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
