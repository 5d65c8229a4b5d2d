"""Beyond one process, with real components: two `tinygpt serve` replicas sharing a real
redis-server enforce one rate limit and one set of client caps; X-Forwarded-For is believed
only from a trusted proxy; a replica that dies stops holding its client's sequences within a
lease; Redis stopped mid-test fails open to per-replica limits and says so; and
`--workers 2` answers from two processes and drains both on SIGTERM.

Clients are told apart by their source address: Linux routes all of 127.0.0.0/8 to the
loopback, so a client bound to 127.0.0.2 or 127.0.0.3 is another peer to the servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from service.settings import Settings, torch_threads_for
from tests.integration.conftest import (
    REPO,
    Server,
    free_port,
    serve_command,
    server_environment,
    stop,
    wait_until_ready,
)
from tests.service.redis_server import RedisServer, running_redis
from tests.service.tiny_models import GPT_ID

PROXY = "127.0.0.2"  # the trusted proxy of the rate-limited pair
STRANGER = "127.0.0.3"  # an ordinary client, like 127.0.0.1
RATE = 6  # requests a minute per client, across both replicas
LEASE_S = 2.0
# Tests must not wait for the decode step to compile.
COMMON = {"TINYGPT_DEVICE": "cpu", "TINYGPT_COMPILE_DECODE": "false"}


@contextmanager
def replica(
    checkpoints: Path, workdir: Path, *options: str, **variables: str
) -> Iterator[tuple[Server, subprocess.Popen]]:
    """One `tinygpt serve` on a free port, and its process (to signal or kill it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", checkpoints, workdir / "server.log")
    env = server_environment(TINYGPT_CHECKPOINTS=str(checkpoints), **COMMON, **variables)
    with server.log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(port, *options), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
    try:
        wait_until_ready(process, server)
        yield server, process
    finally:
        if process.poll() is None:
            stop(process)


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def rate_limited(
    redis: RedisServer, checkpoint_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two replicas, `one` and `two`, limiting each client to RATE requests a minute."""
    workdir = tmp_path_factory.mktemp("rate")
    shared = {
        "TINYGPT_REDIS_URL": redis.url,
        "TINYGPT_RATE_LIMIT": f"{RATE}/minute",
        "TINYGPT_TRUSTED_PROXIES": PROXY,
    }
    with ExitStack() as stack:
        one, _ = stack.enter_context(
            replica(checkpoint_folder, workdir / "one", TINYGPT_REPLICA_ID="one", **shared)
        )
        two, _ = stack.enter_context(
            replica(checkpoint_folder, workdir / "two", TINYGPT_REPLICA_ID="two", **shared)
        )
        yield one, two


def spend(client: httpx.Client, servers: tuple[Server, ...], count: int, **headers: str):
    """`count` requests, taking turns between `servers`; the responses."""
    return [
        client.get(f"{servers[i % len(servers)].url}/v1/models", headers=headers)
        for i in range(count)
    ]


def test_two_replicas_enforce_one_rate_limit(rate_limited: tuple[Server, Server]):
    with client_from("127.0.0.1") as client:
        allowed = spend(client, rate_limited, RATE)
        assert [r.status_code for r in allowed] == [200] * RATE
        assert {r.headers["x-replica-id"] for r in allowed} == {"one", "two"}
        assert [r.headers["ratelimit-remaining"] for r in allowed] == [
            str(n) for n in reversed(range(RATE))
        ]
        for refused in spend(client, rate_limited, 2):  # the N+1-th on either replica
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert "TINYGPT_RATE_LIMIT" in refused.json()["error"]["message"]


def test_forwarded_for_buys_a_budget_only_through_a_trusted_proxy(
    rate_limited: tuple[Server, Server],
):
    with client_from(STRANGER) as stranger, client_from(PROXY) as proxy:
        assert {r.status_code for r in spend(stranger, rate_limited, RATE)} == {200}
        # From an untrusted peer, a forged header is ignored: still the same spent client.
        forged = spend(stranger, rate_limited, 2, **{"x-forwarded-for": "198.51.100.1"})
        assert [r.status_code for r in forged] == [429, 429]
        # Through the trusted proxy, the header names the client, counted across replicas.
        relayed = spend(proxy, rate_limited, RATE + 1, **{"x-forwarded-for": "198.51.100.1"})
        assert [r.status_code for r in relayed] == [200] * RATE + [429]
        # A client that forged a first hop is known by the hop the proxy appended.
        chained = {"x-forwarded-for": "198.51.100.1, 198.51.100.2"}
        assert spend(proxy, rate_limited, 1, **chained)[0].status_code == 200


@pytest.fixture(scope="module")
def capped(
    redis: RedisServer, checkpoint_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, subprocess.Popen]]:
    """Two replicas allowing each client 2 sequences at once in all, with 2-second leases;
    and the first one's process, for the test that kills it (so it comes last here)."""
    workdir = tmp_path_factory.mktemp("caps")
    shared = {
        "TINYGPT_REDIS_URL": redis.url,
        "TINYGPT_REDIS_LEASE": str(LEASE_S),
        "TINYGPT_MAX_CLIENT_SEQUENCES": "2",
        "TINYGPT_MAX_NEW_TOKENS": "1000000",
    }
    with ExitStack() as stack:
        one, process = stack.enter_context(
            replica(checkpoint_folder, workdir / "one", TINYGPT_REPLICA_ID="one", **shared)
        )
        two, _ = stack.enter_context(
            replica(checkpoint_folder, workdir / "two", TINYGPT_REPLICA_ID="two", **shared)
        )
        yield one, two, process


@contextmanager
def endless_stream(server: Server) -> Iterator[httpx.Response]:
    """A stream that generates until the client leaves, open once its first token came."""
    body = {"model": GPT_ID, "prompt": "a", "max_new_tokens": 1_000_000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/generate", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        assert any(line == "event: token" for line in lines)
        yield response


def short_generation(server: Server) -> httpx.Response:
    body = {"model": GPT_ID, "prompt": "a", "max_new_tokens": 2}
    return httpx.post(f"{server.url}/v1/generate", json=body, timeout=30)


def admitted_within(server: Server, seconds: float) -> float | None:
    """Seconds until `server` admits a short generation, or None if it did not in time."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        response = short_generation(server)
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 429, response.text
        time.sleep(0.1)
    return None


def test_client_caps_hold_across_replicas(capped):
    one, two, _ = capped
    with endless_stream(one):
        with endless_stream(two):
            for server in (one, two):
                refused = short_generation(server)
                assert refused.status_code == 429, refused.text
                assert refused.headers["retry-after"] == "1"
                assert "across the replicas" in refused.json()["error"]["message"]
        # The client left the stream on `two`: its sequence ends and frees its lease.
        assert admitted_within(one, 10) is not None, two.log()


def test_a_dead_replica_stops_holding_sequences_within_a_lease(capped):
    one, two, process = capped
    with endless_stream(one), endless_stream(one):
        assert short_generation(two).status_code == 429
        process.kill()  # SIGKILL: no release reaches Redis
        process.wait(10)
    killed = time.monotonic()
    assert short_generation(two).status_code == 429  # still held: the leases outlive it
    waited = admitted_within(two, 3 * LEASE_S)
    assert waited is not None, f"still refused {3 * LEASE_S} s after the kill:\n{two.log()}"
    assert time.monotonic() - killed <= 2 * LEASE_S


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_redis_stopped_fails_open_to_per_replica_limits(
    redis: RedisServer, rate_limited: tuple[Server, Server]
):
    one, two = rate_limited
    client = {"x-forwarded-for": "198.51.100.9"}
    with client_from(PROXY) as proxy:
        assert {r.status_code for r in spend(proxy, rate_limited, 2, **client)} == {200}
        redis.stop()
        try:
            # Each replica counts alone from now on: RATE more on each, then its own 429.
            for server in (one, two):
                statuses = [r.status_code for r in spend(proxy, (server,), RATE + 1, **client)]
                assert statuses == [200] * RATE + [429], server.log()
                assert metric(server, "tinygpt_redis_up") == 0
                assert metric(server, "tinygpt_redis_fallbacks_total") >= RATE + 1
                assert "is unreachable" in server.log() and "failing open" in server.log()
        finally:
            redis.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
            metric(server, "tinygpt_redis_up") == 1 for server in rate_limited
        ):
            spend(proxy, rate_limited, 2, **client)  # a request tries Redis again after 1 s
            time.sleep(0.3)
        for server in rate_limited:
            assert metric(server, "tinygpt_redis_up") == 1, server.log()
            assert "answers again" in server.log()
        # Shared again, on a fresh (empty) Redis: one budget across both replicas.
        fresh = {"x-forwarded-for": "198.51.100.10"}
        statuses = [r.status_code for r in spend(proxy, rate_limited, RATE + 1, **fresh)]
        assert statuses == [200] * RATE + [429]


# -- several workers ----------------------------------------------------------------------


def replica_of(url: str) -> str:
    with httpx.Client(timeout=10) as fresh:  # a new connection each time
        return fresh.get(f"{url}/health").headers["x-replica-id"]


def read_events(url: str, events: list[tuple[str, dict]], first: threading.Event) -> None:
    body = {"model": GPT_ID, "prompt": "a", "max_new_tokens": 1_000_000, "stream": True}
    with httpx.stream("POST", f"{url}/v1/generate", json=body, timeout=60) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
                first.set()


def test_two_workers_answer_and_sigterm_drains_both(checkpoint_folder: Path, tmp_path: Path):
    variables = {
        "TINYGPT_DRAIN_DELAY": "2",
        "TINYGPT_REQUEST_TIMEOUT": "6",  # the in-flight stream ends itself after 6 s
        "TINYGPT_MAX_NEW_TOKENS": "1000000",
    }
    with replica(checkpoint_folder, tmp_path, "--workers", "2", **variables) as (server, process):
        threads = torch_threads_for(Settings(workers=2))
        assert f"2 worker(s) on {len(os.sched_getaffinity(0))} core(s), {threads} torch" in (
            server.log()
        )
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:  # at once, so that both workers accept some
            while len(seen) < 2 and time.monotonic() < deadline:
                seen |= set(pool.map(replica_of, [server.url] * 16))
        assert len(seen) == 2, f"one worker answered everything ({seen}):\n{server.log()}"
        events: list[tuple[str, dict]] = []
        first = threading.Event()
        reader = threading.Thread(target=read_events, args=(server.url, events, first))
        reader.start()
        assert first.wait(30), server.log()
        process.send_signal(signal.SIGTERM)
        # The supervisor hands the signal on within half a second; both workers then drain
        # for 2 s, still answering: every /ready is a 503 (never a refused connection).
        deadline = time.monotonic() + 2
        while httpx.get(f"{server.url}/ready").status_code == 200:
            assert time.monotonic() < deadline, "/ready still answered 200 after SIGTERM"
            time.sleep(0.05)
        readiness = [httpx.get(f"{server.url}/ready", timeout=5) for _ in range(6)]
        assert {r.status_code for r in readiness} == {503}
        assert all(r.json()["error"]["message"].startswith("draining") for r in readiness)
        reader.join(60)
        assert events and events[-1][0] == "done", server.log()
        assert events[-1][1]["finish_reason"] == "timeout"  # ran its course, not cut off
        assert process.wait(30) == 0, server.log()
        assert server.log().count("SIGTERM: draining") == 2
