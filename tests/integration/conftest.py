"""A real `tinygpt serve` process on a free port, serving tiny checkpoints trained here."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.tiny_models import GPT_ID, tiny_checkpoint_folder

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 90
SHIPPED_GPT = "gpt-char"


@dataclass
class Server:
    url: str
    checkpoints: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(**variables: str) -> dict[str, str]:
    """This process' environment without any TINYGPT_* setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYGPT_")}
    return env | variables


def serve_command(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *options]


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def copy_with_a_broken_checkpoint(source: Path, target: Path) -> Path:
    """The tiny models plus `broken`, a copy of the GPT whose weights were cut short."""
    shutil.copytree(source, target)
    weights = shutil.copytree(source / GPT_ID, target / "broken") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return target


@pytest.fixture(scope="session")
def checkpoint_folder(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    return tiny_checkpoint_folder(tmp_path_factory, small_corpus)


@contextmanager
def running_server(
    checkpoints: Path, workdir: Path, *options: str, **variables: str
) -> Iterator[Server]:
    """`tinygpt serve` of `checkpoints` (from the environment, with `variables`) on a free
    port, with command-line `options`; stopped on the way out, whatever happened."""
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", checkpoints, workdir / "server.log")
    env = server_environment(TINYGPT_CHECKPOINTS=str(checkpoints), **variables)
    with server.log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(port, *options), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
        try:
            wait_until_ready(process, server)
            yield server
        finally:
            stop(process)


@pytest.fixture(scope="session")
def server(checkpoint_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tinygpt serve` with the port and device from options, the folder from the environment."""
    workdir = tmp_path_factory.mktemp("server")
    checkpoints = copy_with_a_broken_checkpoint(checkpoint_folder, workdir / "checkpoints")
    with running_server(checkpoints, workdir, "--device", "cpu") as server:
        yield server


def wait_until_ready(process: subprocess.Popen, server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"the server was not ready after {STARTUP_SECONDS} s:\n{server.log()}")


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def shipped_gpt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of the shipped gpt-char alone: slow enough that 1024 tokens take seconds, so a
    disconnect lands mid-generation (the tiny test GPT finishes before a client can leave)."""
    workdir = tmp_path_factory.mktemp("shipped")
    shutil.copytree(REPO / "checkpoints" / SHIPPED_GPT, workdir / "checkpoints" / SHIPPED_GPT)
    with running_server(workdir / "checkpoints", workdir, TINYGPT_DEVICE="cpu") as server:
        yield server
