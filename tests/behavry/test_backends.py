"""The embedded default and the production backends are what the environment says they are."""

import os

import pytest
from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import channel_layers
from django.conf import settings
from django.core.cache import cache
from django.db import connection

from behavry.celery import app as celery_app


def test_the_database_is_the_configured_one(db):
    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"
    assert connection.vendor == expected


async def test_the_channel_layer_delivers_a_message_to_a_group():
    # A fresh instance: the process-wide one may already be bound to the live server's event loop.
    layer = channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    channel = await layer.new_channel()
    await layer.group_add("escalation.test", channel)
    await layer.group_send("escalation.test", {"type": "decision", "status": "approved"})
    assert await layer.receive(channel) == {"type": "decision", "status": "approved"}
    await layer.group_discard("escalation.test", channel)


def test_embedded_default_needs_no_servers():
    if settings.REDIS_URL:
        pytest.skip("Redis pass")
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
    assert celery_app.conf.broker_url == "filesystem://"


@pytest.mark.redis
def test_redis_backs_channels_cache_and_celery():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert celery_app.conf.broker_url == settings.REDIS_URL
    cache.set("behavry:test", 42)
    import redis

    raw = redis.Redis.from_url(settings.REDIS_URL)
    assert any(b"behavry:test" in key for key in raw.keys("*behavry:test*"))
    assert cache.get("behavry:test") == 42


def test_beat_schedules_the_heartbeat():
    celery_app.loader.import_default_modules()  # what a worker does at start-up
    assert celery_app.conf.beat_schedule["behavry-heartbeat"]["task"] == "behavry.tasks.heartbeat"
    assert "behavry.tasks.heartbeat" in celery_app.tasks
