"""The Docker image, built and started with docker-compose the way a user would (make test-docker).

On the offline CI machines `../shared/docker/local-base-image.sh` first installs the Docker
engine and docker-compose and builds a stand-in `python:3.11-slim`; elsewhere the test uses
the Docker already there, or skips.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
LOCAL_BASE_IMAGE = REPO.parent / "shared" / "docker" / "local-base-image.sh"
COMPOSE_FILE = REPO / "docker-compose.yml"
IMAGE = "tinygpt-serve:latest"  # the tag docker-compose.yml gives the image
HEALTHY_WITHIN_S = 180
# Compiling the GPTs' decode steps in a fresh container, after it is healthy.
COMPILED_WITHIN_S = 300
# A first build downloads every dependency; later ones reuse the cached layers.
BUILD_TIMEOUT_S = 1800
# Installing Docker and debootstrapping the base image take 2-3 minutes the first time.
LOCAL_BASE_IMAGE_TIMEOUT_S = 900


def run(args: list[str], timeout: float = 120, env: dict[str, str] | None = None):
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def docker_usable() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"]).returncode == 0


def compose_command() -> list[str] | None:
    """Compose v2 (`docker compose`) where the plugin is there, else v1 (`docker-compose`)."""
    if run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def prepare_docker() -> list[str]:
    """The compose command to use, once the engine runs and `python:3.11-slim` is at hand."""
    if LOCAL_BASE_IMAGE.is_file():
        result = run(["bash", str(LOCAL_BASE_IMAGE)], timeout=LOCAL_BASE_IMAGE_TIMEOUT_S)
        if result.returncode != 0:
            pytest.fail(f"{LOCAL_BASE_IMAGE} failed:\n{result.stdout}{result.stderr}")
    elif not docker_usable():
        pytest.skip(
            f"no Docker engine answers here and {LOCAL_BASE_IMAGE} (which installs one on the "
            "offline CI machines) is absent"
        )
    compose = compose_command()
    if compose is None:
        pytest.skip("Docker runs but neither `docker compose` nor `docker-compose` is installed")
    return compose


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Stack:
    """One `docker-compose up` of the api service, under a project name of its own."""

    compose: list[str]
    project: str
    env: dict[str, str] = field(repr=False)  # the whole environment: keep it out of reports
    port: int
    container: str = ""

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        return run(command, timeout=timeout, env=self.env)

    def logs(self, tail: int | None = 6000) -> str:
        """The api container's log: its last `tail` characters (for failure messages), or all."""
        result = self.run("logs", "--no-color", "api")
        return (result.stdout + result.stderr)[-tail if tail else None :]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def must(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout[-6000:]}{result.stderr}")
    return result.stdout


def wait_until(done: Callable[[], bool], within_s: float, failure: Callable[[], str]) -> None:
    """Ask `done` every 2 s until it holds; after `within_s` seconds fail with `failure()`.
    `done` may fail the test itself, at once, for a state that will not come right."""
    deadline = time.monotonic() + within_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(failure())
        time.sleep(2)


def wait_healthy(stack: Stack) -> None:
    """Until Docker's health check passes; a crash, a restart or `unhealthy` fails at once."""

    def healthy() -> bool:
        inspect = run(["docker", "inspect", "--format", "{{json .State}}", stack.container])
        state = json.loads(must(inspect, "docker inspect"))
        health = state["Health"]["Status"]
        if health == "healthy":
            return True
        if health == "unhealthy" or not state["Running"] or state["Restarting"]:
            pytest.fail(f"the api container is {health} ({state['Status']}):\n{stack.logs()}")
        return False

    wait_until(
        healthy,
        HEALTHY_WITHIN_S,
        lambda: f"no healthy api container after {HEALTHY_WITHIN_S} s:\n{stack.logs()}",
    )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    compose = prepare_docker()
    port = free_port()
    stack = Stack(
        compose=compose,
        project=f"tinygpt-test-{uuid.uuid4().hex[:8]}",
        env={**os.environ, "TINYGPT_HOST_PORT": str(port)},
        port=port,
    )
    try:
        must(stack.run("build", "api", timeout=BUILD_TIMEOUT_S), "docker-compose build")
        must(stack.run("up", "-d", "api", timeout=300), "docker-compose up -d")
        container = must(stack.run("ps", "-q", "api"), "docker-compose ps").strip()
        stack = replace(stack, container=container)
        wait_healthy(stack)
        yield stack
    finally:
        # Containers, network and the checkpoints volume go, also after a failure; the image
        # stays, so that the next build reuses its layers.
        stack.run("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        yield client


def baked_models() -> list[str]:
    """The checkpoint folders the image copies from checkpoints/."""
    return sorted(p.parent.name for p in (REPO / "checkpoints").glob("*/manifest.json"))


def test_the_image_compiles_the_decode_steps_and_is_ready_after(client: httpx.Client, stack: Stack):
    """The image has the compiler the fast path needs: /ready is 503 while the GPTs compile
    (or already 200), then 200 listing every model, and the log says the steps compiled."""
    deadline = time.monotonic() + COMPILED_WITHIN_S
    response = client.get("/ready")
    while response.status_code == 503 and time.monotonic() < deadline:
        assert "compiling the decode step of" in response.json()["error"]["message"]
        time.sleep(1)
        response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "models": baked_models()}
    logs = stack.logs(tail=None)
    assert "decode step: compiled after start-up" in logs, logs[-6000:]
    gpts = [m for m in baked_models() if m.startswith("gpt")]
    assert logs.count("decode step compiled in") == len(gpts), logs[-6000:]


def test_models_run_on_the_cpu(client: httpx.Client):
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    models = response.json()["data"]
    assert sorted(m["id"] for m in models) == baked_models()
    assert {m["device"] for m in models} == {"cpu"}


@pytest.mark.parametrize("model", baked_models())
def test_generate_is_seeded(client: httpx.Client, model: str):
    body = {
        "model": model,
        "prompt": "ROMEO:",
        "max_new_tokens": 24,
        "temperature": 0.8,
        "seed": 7,
    }
    first = client.post("/v1/generate", json=body)
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["model"] == model
    assert result["usage"]["completion_tokens"] == 24
    assert len(result["token_ids"]) == 24
    assert result["text"]
    assert client.post("/v1/generate", json=body).json()["text"] == result["text"]


def test_runs_as_a_non_root_user(stack: Stack):
    uid = must(run(["docker", "exec", stack.container, "id", "-u"]), "docker exec id -u")
    assert uid.strip() != "0"


def test_image_holds_the_cpu_torch_build(stack: Stack, capsys: pytest.CaptureFixture[str]):
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    versions = must(
        run(["docker", "exec", stack.container, "python", "-c", probe]), "docker exec python"
    )
    assert versions.split()[1] == "None", versions
    size = int(must(run(["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE]), "inspect"))
    with capsys.disabled():
        print(f"\n{IMAGE}: {size / 1e6:.0f} MB, torch {versions.split()[0]}")
