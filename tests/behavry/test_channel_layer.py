"""The channel layer as configured (Redis in production)."""

import asyncio

import pytest
import redis.exceptions
from channels.layers import channel_layers


@pytest.mark.redis
async def test_an_idle_receive_outlasts_the_redis_blocking_pop():
    """channels-redis blocks 5 s per BZPOPMIN; a client read timeout as short as that turned every
    idle receive() (the proxy's process bus, held escalations) into an error every 5 s."""
    layer = channel_layers.make_backend("default")
    channel = await layer.new_channel()
    with pytest.raises(TimeoutError) as caught:  # ours, after 2 blocking pops: nothing arrived
        await asyncio.wait_for(layer.receive(channel), timeout=layer.brpop_timeout * 2 + 1)
    assert not isinstance(caught.value, redis.exceptions.RedisError)
    await layer.send(channel, {"type": "still.listening"})
    assert (await asyncio.wait_for(layer.receive(channel), timeout=5))["type"] == "still.listening"
