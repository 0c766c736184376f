"""Behavry: a governance proxy for AI agents that speak MCP."""

from .celery import app as celery_app

__all__ = ["celery_app"]
