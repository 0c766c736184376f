from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from audit.verify import audit_verify


class Command(BaseCommand):
    help = "Verify the audit hash chains. Prints ok or the first broken event and why; exits 1 if broken."

    def add_arguments(self, parser):
        parser.add_argument("--agent", type=int, default=None, help="Verify only this agent's chain (agent id).")
        parser.add_argument("--since", default=None, help="ISO 8601 time; start at the first event at or after it.")
        parser.add_argument("--json", action="store_true", help="Print the full result as JSON.")

    def handle(self, *args, agent, since, **options):
        since_dt = None
        if since:
            since_dt = parse_datetime(since)
            if since_dt is None:
                raise CommandError(f"--since {since!r} is not an ISO 8601 date-time")
        result = audit_verify(agent_id=agent, since=since_dt)
        if options["json"]:
            self.stdout.write(_dumps(result.as_dict()))
        elif result.ok:
            self.stdout.write(
                f"ok: {result.events_checked} events in {result.chains_checked} chains verified in {result.seconds}s"
            )
        else:
            b = result.first_broken
            self.stdout.write(f"BROKEN: chain {b.chain} event id={b.event_id} seq={b.seq}: {b.reason}")
        if not result.ok:
            raise SystemExit(1)


def _dumps(data) -> str:
    return json.dumps(data, indent=2)
