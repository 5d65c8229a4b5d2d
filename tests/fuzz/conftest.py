"""A real `tinygpt serve` process for the fuzz tests, with short generations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    Server,
    checkpoint_folder,  # noqa: F401  (the session fixture the server is built from)
    copy_with_a_broken_checkpoint,
    running_server,
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
    with running_server(
        checkpoints,
        workdir,
        "--device",
        "cpu",
        TINYGPT_MAX_NEW_TOKENS=str(FUZZ_MAX_NEW_TOKENS),
        TINYGPT_LOG_LEVEL="warning",
    ) as server:
        yield server
