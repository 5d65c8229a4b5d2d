"""The counters behind the per-client limits, shared by every worker and replica through Redis
when TINYGPT_REDIS_URL is set, else kept in this process.

Two kinds of count, each a single atomic step in Redis (a Lua script runs alone), so two
replicas can never both take the last free unit:

- the rate limit: a fixed window per client, started by its first request; INCR counts the
  request and the key expires with the window, so `Retry-After` is the key's time to live;
- the concurrency cap: each sequence admitted is a lease, a member of the client's sorted set
  scored by when it expires. Admission drops the expired leases, counts the rest and adds the
  new ones in one script. A replica refreshes its leases every third of a lease period while
  their sequences run and removes each when it ends (the removal starts before the sequence's
  reader sees its end), so the sequences of a replica that dies stop counting within one lease
  (TINYGPT_REDIS_LEASE), instead of forever.

Redis unreachable: the store fails open to this process' own counters (and says so in the log
and in /metrics) rather than refusing every request: the service keeps serving, each replica
still enforces every limit on its own, so a client gets at most one limit per replica until
Redis answers again. It tries Redis again a second after a failure, and its heartbeat notices
the recovery.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

# Redis answers a local network in well under a millisecond: a request waits at most this
# long for it before its limits are counted here instead.
REDIS_TIMEOUT_S = 0.5
# After a failure, requests skip Redis this long before trying it again.
RETRY_AFTER_FAILURE_S = 1.0
KEY_PREFIX = "tinygpt:"

# KEYS[1] the client's window; ARGV[1] the window in ms. Returns {requests so far, ms left}.
WINDOW_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""

# KEYS[1] the client's leases; ARGV[1] the cap, ARGV[2] the lease in ms, ARGV[3..] the new
# leases. Returns {1 if admitted else 0, the leases held before}.
ACQUIRE_SCRIPT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held + #ARGV - 2 > tonumber(ARGV[1]) then return {0, held} end
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, held}
"""

# KEYS[1] the client's leases; ARGV[1] the lease in ms, ARGV[2..] the leases still running
# here. Re-adds any that expired while Redis was out of reach: they still run.
REFRESH_SCRIPT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
"""


@dataclass(frozen=True)
class WindowHit:
    """One request counted against its client's rate-limit window."""

    allowed: bool
    remaining: int  # requests left in the window
    reset_after: float  # seconds until the window ends


class OverCapError(Exception):
    """The client holds `held` sequences: admitting more would take it past its cap."""

    def __init__(self, held: int):
        super().__init__(held)
        self.held = held


Release = Callable[[], None]


class LimitStore(Protocol):
    """Where the rate limit and the per-client sequence counts are kept."""

    shared: bool  # counted across replicas, not in this process alone

    async def hit(self, client: str, limit: int, window_s: float) -> WindowHit:
        """Count one request of `client` in its window of `window_s` seconds."""
        ...

    async def acquire(self, client: str, count: int, cap: int) -> list[Release]:
        """`count` more sequences for `client`, one release each (call it when the sequence
        ends), or OverCapError when it would then hold more than `cap`."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class LocalLimits:
    """The counts of this process alone: plain dictionaries on the event loop, which runs one
    check-and-count at a time."""

    shared = False

    def __init__(self) -> None:
        self.windows: dict[str, tuple[int, float]] = {}  # client -> (requests, window end)
        self.held: dict[str, int] = {}  # client -> sequences queued or running
        self.next_prune = 0.0

    def hit_now(self, client: str, limit: int, window_s: float) -> WindowHit:
        now = time.monotonic()
        if now >= self.next_prune:  # windows of clients gone quiet, once a window
            self.windows = {c: w for c, w in self.windows.items() if w[1] > now}
            self.next_prune = now + window_s
        count, end = self.windows.get(client, (0, now + window_s))
        if now >= end:
            count, end = 0, now + window_s
        if count >= limit:
            return WindowHit(False, 0, end - now)
        self.windows[client] = (count + 1, end)
        return WindowHit(True, limit - count - 1, end - now)

    def acquire_now(self, client: str, count: int, cap: int) -> list[Release]:
        held = self.held.get(client, 0)
        if held + count > cap:
            raise OverCapError(held)
        self.held[client] = held + count
        return [partial(self.release, client) for _ in range(count)]

    def release(self, client: str) -> None:
        left = self.held[client] - 1
        if left:
            self.held[client] = left
        else:
            del self.held[client]

    async def hit(self, client: str, limit: int, window_s: float) -> WindowHit:
        return self.hit_now(client, limit, window_s)

    async def acquire(self, client: str, count: int, cap: int) -> list[Release]:
        return self.acquire_now(client, count, cap)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def describe_url(url: str) -> str:
    """The Redis URL without its password, for the log."""
    parts = urlsplit(url)
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    return f"{parts.scheme}://{where}"


class RedisLimits:
    """The counts in Redis, shared by every replica that points at the same server; this
    process' own LocalLimits while Redis cannot be reached (see the module's docstring)."""

    shared = True

    def __init__(self, url: str, lease_s: float):
        self.where = describe_url(url)
        # No retries inside the client: a failed call falls back at once, and the store
        # itself tries Redis again after RETRY_AFTER_FAILURE_S.
        self.redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self.lease_ms = max(1, round(lease_s * 1000))
        self.local = LocalLimits()
        self.up: bool | None = None  # None until Redis first answers or fails
        self.fallbacks = 0  # decisions made by `local` because Redis failed
        self.retry_at = 0.0
        # Lease names must differ between replicas even when their names are alike.
        self.owner = uuid.uuid4().hex[:12]
        self.serial = itertools.count()
        self.live: dict[str, set[str]] = {}  # client -> this process' leases still running
        self.tasks: set[asyncio.Task[None]] = set()  # releases on their way to Redis
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.window_script = self.redis.register_script(WINDOW_SCRIPT)
        self.acquire_script = self.redis.register_script(ACQUIRE_SCRIPT)
        self.refresh_script = self.redis.register_script(REFRESH_SCRIPT)

    # -- reachability ---------------------------------------------------------------------

    def usable(self) -> bool:
        return self.up is not False or time.monotonic() >= self.retry_at

    def answered(self) -> None:
        if self.up is False:
            log.warning("Redis at %s answers again: the limits are shared again", self.where)
        self.up = True

    def failed(self, err: Exception) -> None:
        if self.up is not False:
            log.warning(
                "Redis at %s is unreachable (%s): failing open, the rate limit and the client "
                "caps are counted by this process alone until it answers again",
                self.where,
                str(err) or type(err).__name__,
            )
        self.up = False
        self.retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S

    # -- the counts -----------------------------------------------------------------------

    async def hit(self, client: str, limit: int, window_s: float) -> WindowHit:
        if self.usable():
            key = f"{KEY_PREFIX}rate:{window_s:g}:{client}"
            try:
                count, left_ms = await self.window_script(
                    keys=[key], args=[max(1, round(window_s * 1000))]
                )
            except (RedisError, OSError) as err:
                self.failed(err)
            else:
                self.answered()
                return WindowHit(count <= limit, max(0, limit - count), left_ms / 1000)
        self.fallbacks += 1
        return self.local.hit_now(client, limit, window_s)

    async def acquire(self, client: str, count: int, cap: int) -> list[Release]:
        if self.usable():
            leases = [f"{self.owner}:{next(self.serial)}" for _ in range(count)]
            try:
                admitted, held = await self.acquire_script(
                    keys=[self.leases_key(client)], args=[cap, self.lease_ms, *leases]
                )
            except (RedisError, OSError) as err:
                self.failed(err)
            else:
                self.answered()
                if not admitted:
                    raise OverCapError(held)
                self.live.setdefault(client, set()).update(leases)
                return [partial(self.release, client, lease) for lease in leases]
        self.fallbacks += 1
        return self.local.acquire_now(client, count, cap)

    def leases_key(self, client: str) -> str:
        return f"{KEY_PREFIX}leases:{client}"

    def release(self, client: str, lease: str) -> None:
        """On the event loop, when a sequence ends: no longer refreshed here, and removed from
        Redis by a task (while Redis is unreachable, it expires there on its own)."""
        live = self.live[client]
        live.discard(lease)
        if not live:
            del self.live[client]
        if self.usable():
            task = asyncio.get_running_loop().create_task(self.remove(client, lease))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def remove(self, client: str, lease: str) -> None:
        try:
            await self.redis.zrem(self.leases_key(client), lease)
        except (RedisError, OSError) as err:
            self.failed(err)

    # -- lifecycle ------------------------------------------------------------------------

    async def beat(self) -> None:
        """Refresh the leases still running here, or just ask whether Redis answers."""
        try:
            if self.live:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for client, leases in list(self.live.items()):
                        await self.refresh_script(  # queued: the pipeline sends them at once
                            keys=[self.leases_key(client)],
                            args=[self.lease_ms, *sorted(leases)],
                            client=pipe,
                        )
                    await pipe.execute()
            else:
                await self.redis.ping()
        except (RedisError, OSError) as err:
            self.failed(err)
        else:
            self.answered()

    async def heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.beat()

    async def start(self) -> None:
        await self.beat()
        if self.up:
            log.info(
                "limits shared through Redis at %s (leases of %g s, TINYGPT_REDIS_LEASE)",
                self.where,
                self.lease_ms / 1000,
            )
        self.heartbeat_task = asyncio.get_running_loop().create_task(self.heartbeat())

    async def close(self) -> None:
        if self.heartbeat_task is not None:
            self.heartbeat_task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=REDIS_TIMEOUT_S)
        await self.redis.aclose()


def limit_store(redis_url: str, lease_s: float) -> LimitStore:
    """Redis when a URL is set, else this process' memory."""
    return RedisLimits(redis_url, lease_s) if redis_url else LocalLimits()
