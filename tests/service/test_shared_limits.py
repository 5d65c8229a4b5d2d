"""The limits' counters: in this process, and shared through a real redis-server by stores
that stand for separate replicas (each its own connections, as two processes would have)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from service.shared_limits import (
    RETRY_AFTER_FAILURE_S,
    LocalLimits,
    OverCapError,
    RedisLimits,
    describe_url,
)
from tests.service.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@asynccontextmanager
async def replica(url: str, lease_s: float = 15.0) -> AsyncIterator[RedisLimits]:
    store = RedisLimits(url, lease_s)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def a_client() -> str:
    """A client no other test has used: the Redis server lives for the whole module."""
    return f"addr:test-{uuid.uuid4().hex[:8]}"


# -- in this process ----------------------------------------------------------------------


def test_a_local_window_counts_refuses_and_starts_again():
    store = LocalLimits()
    hits = [store.hit_now("alice", 3, 0.3) for _ in range(4)]
    assert [h.allowed for h in hits] == [True, True, True, False]
    assert [h.remaining for h in hits] == [2, 1, 0, 0]
    assert 0 < hits[3].reset_after <= 0.3
    assert store.hit_now("bob", 3, 0.3).allowed  # bob has a window of his own
    time.sleep(0.35)
    assert store.hit_now("alice", 3, 0.3).remaining == 2
    assert set(store.windows) == {"alice"}  # bob's ended window was dropped


def test_local_caps_count_until_each_sequence_is_released():
    store = LocalLimits()
    first = store.acquire_now("alice", 2, 3)
    with pytest.raises(OverCapError) as refused:
        store.acquire_now("alice", 2, 3)
    assert refused.value.held == 2
    first[0]()
    store.acquire_now("alice", 2, 3)
    assert store.held == {"alice": 3}


# -- through Redis ------------------------------------------------------------------------


async def test_two_replicas_share_one_window_and_never_overshoot(redis_server: RedisServer):
    client = a_client()
    async with replica(redis_server.url) as one, replica(redis_server.url) as two:
        # 40 requests at once, half through each replica: exactly the limit gets through.
        hits = await asyncio.gather(*(store.hit(client, 10, 60) for store in [one, two] * 20))
        assert sum(hit.allowed for hit in hits) == 10
        assert sorted(hit.remaining for hit in hits if hit.allowed) == list(range(10))
        assert all(0 < hit.reset_after <= 60 for hit in hits)
        assert one.up and two.up and one.fallbacks == two.fallbacks == 0


async def test_a_redis_window_ends_with_its_key(redis_server: RedisServer):
    client = a_client()
    async with replica(redis_server.url) as one:
        assert (await one.hit(client, 1, 0.5)).allowed
        refused = await one.hit(client, 1, 0.5)
        assert not refused.allowed and 0 < refused.reset_after <= 0.5
        await asyncio.sleep(refused.reset_after + 0.05)
        assert (await one.hit(client, 1, 0.5)).allowed


async def test_caps_count_a_clients_sequences_across_replicas(redis_server: RedisServer):
    client = a_client()
    async with replica(redis_server.url) as one, replica(redis_server.url) as two:
        releases = await one.acquire(client, 2, 3)
        with pytest.raises(OverCapError) as refused:
            await two.acquire(client, 2, 3)
        assert refused.value.held == 2
        await two.acquire(client, 1, 3)
        with pytest.raises(OverCapError):
            await two.acquire(client, 1, 3)
        releases[0]()
        await asyncio.gather(*one.tasks)  # the release on its way to Redis
        await two.acquire(client, 1, 3)
        assert await one.redis.zcard(one.leases_key(client)) == 3


async def test_a_dead_replicas_leases_expire_and_a_live_ones_do_not(redis_server: RedisServer):
    """Leases of 0.6 s: the live replica's heartbeat refreshes its own every 0.2 s, while
    the dead one (never started, so no heartbeat: a process killed with its sequences
    running) stops counting within one lease."""
    dead_client, live_client = a_client(), a_client()
    dead = RedisLimits(redis_server.url, 0.6)
    try:
        async with replica(redis_server.url, 0.6) as live, replica(redis_server.url) as other:
            await dead.acquire(dead_client, 3, 3)
            await live.acquire(live_client, 3, 3)
            with pytest.raises(OverCapError):
                await other.acquire(dead_client, 1, 3)
            await asyncio.sleep(1.5)  # 2.5 leases
            await other.acquire(dead_client, 3, 3)
            with pytest.raises(OverCapError) as refused:
                await other.acquire(live_client, 1, 3)
            assert refused.value.held == 3
    finally:
        await dead.redis.aclose()


async def test_redis_down_fails_open_to_per_replica_counts_and_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="service.shared_limits")
    before, during = a_client(), a_client()
    async with replica(redis_server.url) as one:
        assert (await one.hit(before, 2, 60)).allowed
        redis_server.stop()
        try:
            # Counted by this process alone: the limit still holds, per replica.
            hits = [await one.hit(during, 2, 60) for _ in range(3)]
            assert [hit.allowed for hit in hits] == [True, True, False]
            held = await one.acquire(during, 1, 1)
            with pytest.raises(OverCapError):
                await one.acquire(during, 1, 1)
            assert one.up is False and one.fallbacks == 5
            assert "is unreachable" in caplog.text and "failing open" in caplog.text
        finally:
            redis_server.start()
        await asyncio.sleep(RETRY_AFTER_FAILURE_S + 0.1)
        assert (await one.hit(during, 2, 60)).allowed  # a fresh server: empty windows
        assert one.up is True and one.fallbacks == 5
        assert "answers again" in caplog.text
        held[0]()  # a sequence admitted during the outage is released where it was counted
        assert one.local.held == {}


def test_the_log_never_shows_the_password():
    assert describe_url("redis://user:s3cret@cache.internal:6380/2") == (
        "redis://cache.internal:6380"
    )
    assert describe_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


# -- the app ------------------------------------------------------------------------------


async def test_two_apps_on_one_redis_enforce_one_rate_limit_and_report_it(
    settings: Settings, redis_server: RedisServer
):
    shared = msgspec.structs.replace(
        settings, compile_decode=False, rate_limit="3/minute", redis_url=redis_server.url
    )
    one = create_app(msgspec.structs.replace(shared, replica_id="one"))
    two = create_app(msgspec.structs.replace(shared, replica_id="two"))
    async with AsyncTestClient(app=one) as first, AsyncTestClient(app=two) as second:
        # The test client's peer is one address for both: one client, one budget.
        statuses = [(await c.get("/v1/models")).status_code for c in (first, second) * 2]
        assert statuses == [200, 200, 200, 429]
        refused = await second.get("/v1/models")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-replica-id"] == "two"
        metrics = (await first.get("/metrics")).text
        assert 'tinygpt_redis_up{replica="one"} 1.0' in metrics
        assert 'tinygpt_redis_fallbacks_total{replica="one"} 0.0' in metrics


async def test_without_redis_the_metrics_say_nothing_of_it(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, compile_decode=False))
    async with AsyncTestClient(app=app) as client:
        assert "tinygpt_redis" not in (await client.get("/metrics")).text
