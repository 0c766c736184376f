"""ASGI entry point: Channels routes held MCP connections, everything else falls through to Django."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "behavry.settings")

# Must run before importing anything that touches models (Channels docs, "Django integration").
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from behavry.routing import held_routes  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Channels' router takes ASGI apps; django-stubs types re_path for Django views only.
        "http": URLRouter([*held_routes, re_path(r"", django_asgi_app)]),  # type: ignore[arg-type]
    }
)
