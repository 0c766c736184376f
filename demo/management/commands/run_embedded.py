"""Start Behavry on the embedded default in the foreground: ASGI server, Celery worker+beat, demo upstream.

This is what `make run` ends with. Ctrl-C (or SIGTERM) stops every child; if any child dies, the
others are stopped too, so a half-running system never looks healthy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from behavry.asgi_server import asgi_server_command
from demo.loader import demo_load


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                if response.status < 500:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


class Command(BaseCommand):
    help = "Run Behavry with demo data in the foreground (ASGI server, Celery worker with beat, demo upstream)."

    def add_arguments(self, parser):
        parser.add_argument("--no-upstream", action="store_true", help="Do not start the demo upstream.")

    def handle(self, *args, no_upstream, **options):
        port = settings.BEHAVRY_PORT
        upstream_port = settings.BEHAVRY_DEMO_UPSTREAM_PORT
        demo = demo_load(upstream_port=upstream_port)
        python = sys.executable
        commands = {
            "web": asgi_server_command(settings.BEHAVRY_ASGI_SERVER, port),
            "celery": [
                python,
                "-m",
                "celery",
                "-A",
                "behavry",
                "worker",
                "-B",
                "--loglevel=warning",
                "--concurrency=2",
            ],
        }
        if not no_upstream:
            commands["upstream"] = [python, "-m", "demo.upstream", "--port", str(upstream_port)]
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, cmd in commands.items():
                # Own process group per child, so our Ctrl-C handling decides the shutdown order.
                children[name] = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)  # noqa: S603 - fixed argv, our own programs
            if not _wait_http(f"http://127.0.0.1:{port}/healthz", 30):
                raise CommandError(f"Behavry did not answer on port {port} within 30 s")
            self.stdout.write(
                "\n".join(
                    [
                        "",
                        f"Behavry is running: http://127.0.0.1:{port}/  (admin: http://127.0.0.1:{port}/admin/)",
                        f"Console login: {demo.admin_username} / {demo.admin_password}",
                        f"Demo upstream: {demo.server_url}  (agents reach it at http://127.0.0.1:{port}/mcp/demo)",
                        *[f"Agent {name} token: {token}" for name, token in demo.tokens.items()],
                        "Press Ctrl-C to stop everything.",
                        "",
                    ]
                )
            )
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(f"{name} exited with status {child.returncode}; stopping the rest")
                        stopping = True
                        break
                time.sleep(0.3)
        finally:
            for child in children.values():
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for child in children.values():
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            self.stdout.write("Behavry stopped.")
