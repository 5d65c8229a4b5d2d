"""A real `tinygpt serve`: API keys over HTTP, SIGTERM draining an in-flight stream, and
POST /admin/reload swapping checkpoints without dropping requests."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    REPO,
    Server,
    free_port,
    serve_command,
    server_environment,
    stop,
    wait_until_ready,
)

SHIPPED_GPT = "gpt-char"
API_KEY = "sk-lifecycle-test"
ADMIN_KEY = "admin-lifecycle-test"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Server]:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(REPO / "checkpoints" / SHIPPED_GPT, checkpoints / SHIPPED_GPT)
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", checkpoints, tmp_path / "server.log")
    variables = server_environment(
        TINYGPT_CHECKPOINTS=str(checkpoints),
        TINYGPT_DEVICE="cpu",
        TINYGPT_API_KEYS=API_KEY,
        TINYGPT_ADMIN_KEYS=ADMIN_KEY,
        **env,
    )
    with server.log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(port), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=variables
        )
    wait_until_ready(process, server)
    return process, server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Server]]:
    process, server = start(tmp_path, TINYGPT_SHUTDOWN_GRACE="30")
    try:
        yield process, server
    finally:
        if process.poll() is None:
            stop(process)


def read_stream(url: str, events: list[tuple[str, dict]], first: threading.Event) -> None:
    request = {"model": SHIPPED_GPT, "prompt": "The ", "max_new_tokens": 1024, "stream": True}
    with httpx.stream("POST", f"{url}/v1/generate", json=request, headers=AUTH, timeout=60) as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
                first.set()


def test_api_keys_through_the_real_server(served):
    _, server = served
    response = httpx.get(f"{server.url}/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()["error"]) == {"message", "type", "param"}
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert API_KEY not in server.log()


def test_sigterm_lets_an_inflight_stream_finish_then_exits_0(served):
    process, server = served
    events: list[tuple[str, dict]] = []
    first = threading.Event()
    reader = threading.Thread(target=read_stream, args=(server.url, events, first))
    reader.start()
    assert first.wait(30), server.log()
    process.send_signal(signal.SIGTERM)
    at_signal = len(events)
    # New connections are refused while the stream is still being written.
    refused = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not refused:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
        except httpx.TransportError:
            refused = True
        time.sleep(0.05)
    reader.join(60)
    assert refused, "the server still accepted connections after SIGTERM"
    assert events and events[-1][0] == "done", server.log()
    assert len(events) > at_signal + 1, "the stream had ended before SIGTERM"
    done = events[-1][1]
    assert done["finish_reason"] in ("length", "stop"), done
    assert len(done["token_ids"]) == sum(1 for name, _ in events if name == "token")
    assert process.wait(30) == 0, server.log()


def test_reload_refuses_a_tampered_checkpoint_without_dropping_a_stream(served):
    _, server = served
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{server.url}/admin/reload", headers=AUTH).status_code == 401
    events: list[tuple[str, dict]] = []
    first = threading.Event()
    reader = threading.Thread(target=read_stream, args=(server.url, events, first))
    reader.start()
    assert first.wait(30), server.log()
    weights = server.checkpoints / SHIPPED_GPT / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    response = httpx.post(f"{server.url}/admin/reload", headers=admin, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reloaded"] == [] and [r["model"] for r in body["refused"]] == [SHIPPED_GPT]
    reader.join(60)
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] in ("length", "stop")
    response = httpx.post(
        f"{server.url}/v1/generate",
        json={"model": SHIPPED_GPT, "prompt": "a", "max_new_tokens": 5},
        headers=AUTH,
    )
    assert response.status_code == 200
