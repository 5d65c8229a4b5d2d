"""A real `tinygpt serve` process for the fuzz tests, with short generations."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    Server,
    checkpoint_folder,  # noqa: F401  (the session fixture the server is built from)
    copy_with_a_broken_checkpoint,
    free_port,
    serve_command,
    server_environment,
    stop,
    wait_until_ready,
)

# Generated requests may ask for up to this many tokens; more would only make the run slower.
FUZZ_MAX_NEW_TOKENS = 64


@pytest.fixture(scope="session")
def fuzz_server(
    checkpoint_folder: Path,  # noqa: F811  (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("fuzz-server")
    checkpoints = copy_with_a_broken_checkpoint(checkpoint_folder, workdir / "checkpoints")
    port = free_port()
    server = Server(f"http://127.0.0.1:{port}", checkpoints, workdir / "server.log")
    env = server_environment(
        TINYGPT_CHECKPOINTS=str(checkpoints),
        TINYGPT_MAX_NEW_TOKENS=str(FUZZ_MAX_NEW_TOKENS),
        TINYGPT_LOG_LEVEL="warning",
    )
    with server.log_path.open("w") as log:
        process = subprocess.Popen(
            serve_command(port, "--device", "cpu"), stdout=log, stderr=subprocess.STDOUT,
            cwd=REPO, env=env,
        )  # fmt: skip
        try:
            wait_until_ready(process, server)
            yield server
        finally:
            stop(process)
