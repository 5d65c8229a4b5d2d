"""The `scale` profile of docker-compose.yml, started the way a user would: two replicas behind
the HAProxy balancer, their limits shared through the profile's Redis (make test-docker;
`pytest -m docker tests/docker -k scale` for these alone).

Every request from this host reaches the balancer from one address, so each test that counts
requests uses API keys of its own: the rate limit counts per key.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import pytest

from tests.docker.test_image import (
    BUILD_TIMEOUT_S,
    COMPOSE_FILE,
    HEALTHY_WITHIN_S,
    free_port,
    must,
    prepare_docker,
    run,
    wait_until,
)

pytestmark = pytest.mark.docker

REPLICAS = 2
RATE = 200  # requests a minute per key, across the replicas
LIMIT_KEY = "k-limit"
LOAD_KEYS = [f"k-load-{i}" for i in range(4)]
MODEL = "gpt-char"


@dataclass(frozen=True)
class ScaleStack:
    compose: list[str]
    project: str
    env: dict[str, str] = field(repr=False)  # the whole environment: keep it out of reports
    port: int

    def run(self, *args: str, timeout: float = 120):
        command = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project]
        return run([*command, "--profile", "scale", *args], timeout=timeout, env=self.env)

    def containers(self) -> list[str]:
        return must(self.run("ps", "-q", "replica"), "docker-compose ps").split()

    def logs(self, *services: str) -> str:
        result = self.run("logs", "--no-color", *services)
        return (result.stdout + result.stderr)[-8000:]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def inspect(container: str, template: str) -> str:
    return must(run(["docker", "inspect", "--format", template, container]), "docker inspect")


def container_logs(container: str) -> str:
    result = run(["docker", "logs", container])
    return (result.stdout + result.stderr)[-8000:]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def replica_ids(stack: ScaleStack, count: int) -> Counter[str | None]:
    """Which replica answered each of `count` requests through the balancer (None: the
    balancer itself, with a 503, while no replica is ready)."""
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        return Counter(client.get("/health").headers.get("x-replica-id") for _ in range(count))


def wait_until_both_routed(stack: ScaleStack) -> None:
    """Until the balancer sends requests to every replica (each one's /ready said 200)."""

    def routed() -> bool:
        try:
            return len(set(replica_ids(stack, 2 * REPLICAS)) - {None}) == REPLICAS
        except httpx.HTTPError:
            return False  # the balancer is not listening yet

    wait_until(
        routed,
        HEALTHY_WITHIN_S,
        lambda: f"the balancer did not reach {REPLICAS} replicas:\n{stack.logs()}",
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[ScaleStack]:
    compose = prepare_docker()
    port = free_port()
    stack = ScaleStack(
        compose=compose,
        project=f"tinygpt-scale-{uuid.uuid4().hex[:8]}",
        env={
            **os.environ,
            "TINYGPT_BALANCER_PORT": str(port),
            "TINYGPT_RATE_LIMIT": f"{RATE}/minute",
            "TINYGPT_API_KEYS": ",".join([LIMIT_KEY, *LOAD_KEYS]),
            "TINYGPT_COMPILE_DECODE": "false",  # /ready would wait for the compiles
        },
        port=port,
    )
    try:
        build = stack.run("build", "replica", "redis", "balancer", timeout=BUILD_TIMEOUT_S)
        must(build, "docker-compose build")
        up = stack.run("up", "-d", "--scale", f"replica={REPLICAS}", "balancer", timeout=300)
        must(up, "docker-compose up")
        wait_until_both_routed(stack)
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", "--timeout", "45", timeout=300)


def test_requests_reach_both_replicas(stack: ScaleStack):
    seen = replica_ids(stack, 20)
    assert None not in seen and len(seen) == REPLICAS, seen
    assert min(seen.values()) >= 5, seen  # round robin


def docker_time(stamp: str) -> datetime:
    """A time from `docker inspect` (RFC 3339, nanoseconds, Z), to the microsecond."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{seconds}.{fraction[:6]:0<6}+00:00")


def test_only_the_seed_copies_the_checkpoints_into_the_volume(stack: ScaleStack):
    """Docker copies the image's checkpoints into the empty volume as each container that mounts
    it is created, and containers created at once race: one failed in CI with "mkdir
    .../gpt-char: file exists" (moby/moby#43068). The seed copies, once, and exits 0 before
    any replica is created; the replicas mount the volume read-only and never copy."""
    [seed] = must(stack.run("ps", "-a", "-q", "seed"), "docker-compose ps").split()
    state = json.loads(inspect(seed, "{{json .State}}"))
    assert state["ExitCode"] == 0 and state["Status"] == "exited", state
    for replica in stack.containers():
        assert docker_time(inspect(replica, "{{.Created}}")) > docker_time(state["FinishedAt"])
        mounts = json.loads(inspect(replica, "{{json .HostConfig.Mounts}}"))
        [checkpoints] = [m for m in mounts if m["Target"] == "/app/checkpoints"]
        assert checkpoints["ReadOnly"] and checkpoints["VolumeOptions"]["NoCopy"], checkpoints


def test_the_rate_limit_holds_across_replicas(stack: ScaleStack):
    with httpx.Client(base_url=stack.url, timeout=10, headers=auth(LIMIT_KEY)) as client:
        answers = [client.get("/v1/models") for _ in range(RATE + 1)]
    allowed, refused = answers[:RATE], answers[RATE]
    assert {r.status_code for r in allowed} == {200}
    by_replica = Counter(r.headers["x-replica-id"] for r in allowed)
    assert len(by_replica) == REPLICAS, by_replica  # each replica let some through
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60


@dataclass
class Load:
    """Short generations sent back to back by a few clients, each answer recorded."""

    answers: list[tuple[float, int, str]] = field(default_factory=list)  # time, status, replica
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, url: str, key: str) -> None:
        body = {"model": MODEL, "prompt": "ROMEO:", "max_new_tokens": 8, "seed": 1}
        with httpx.Client(base_url=url, timeout=30, headers=auth(key)) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/v1/generate", json=body)
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                else:
                    replica = response.headers.get("x-replica-id", "")
                    self.answers.append((time.monotonic(), response.status_code, replica))
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:200]}")
                time.sleep(0.1)  # within each key's rate limit


def test_stopping_a_replica_loses_no_request(stack: ScaleStack):
    load = Load()
    clients = [threading.Thread(target=load.client, args=(stack.url, k)) for k in LOAD_KEYS]
    for client in clients:
        client.start()
    try:
        time.sleep(3)
        leaving = stack.containers()[0]
        hostname = inspect(leaving, "{{.Config.Hostname}}").strip()
        stopping = time.monotonic()
        must(run(["docker", "stop", "--time", "45", leaving], timeout=90), "docker stop")
        stopped = time.monotonic()
        time.sleep(4)
    finally:
        load.stop.set()
        for client in clients:
            client.join(60)
    state = json.loads(inspect(leaving, "{{json .State}}"))
    logs = container_logs(leaving)
    assert load.failures == [], f"{load.failures[:5]}\n{stack.logs('balancer')}"
    before = {replica for at, _, replica in load.answers if at < stopping}
    after = {replica for at, _, replica in load.answers if at > stopped}
    # A replica answers as `<host name>-<pid>`; in a container the host name is its id.
    [leaving_id] = [replica for replica in before if replica.startswith(f"{hostname}-")]
    assert len(before) == REPLICAS and after and leaving_id not in after, (before, after)
    assert sum(1 for at, _, _ in load.answers if at > stopped) >= 10
    assert state["ExitCode"] == 0, logs
    assert "SIGTERM: draining" in logs
