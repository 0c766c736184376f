from __future__ import annotations

from django.core.management.base import BaseCommand

from demo.loader import demo_load


class Command(BaseCommand):
    help = "Load demo data: the demo upstream server, agent roles, agents with fresh tokens, a console admin."

    def add_arguments(self, parser):
        parser.add_argument("--upstream-port", type=int, default=None)

    def handle(self, *args, upstream_port, **options):
        result = demo_load(upstream_port=upstream_port)
        self.stdout.write(f"upstream: demo -> {result.server_url}")
        for name, token in result.tokens.items():
            self.stdout.write(f"agent {name}: token {token}")
        self.stdout.write(f"console admin: {result.admin_username} / {result.admin_password}")
