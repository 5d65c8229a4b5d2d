from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.tiny_models import tiny_checkpoint_folder


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def checkpoint_folder(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    return tiny_checkpoint_folder(tmp_path_factory, small_corpus)


@pytest.fixture
def settings(checkpoint_folder: Path) -> Settings:
    """In-process apps decode eagerly: compiling is the default, tested on its own (see
    tests/service/test_registry.py and tests/integration/test_startup.py), and would cost
    every app here half a minute of CPU."""
    return Settings(checkpoints=str(checkpoint_folder), device="cpu", compile_decode=False)


@pytest.fixture
def folder_with_a_broken_checkpoint(checkpoint_folder: Path, tmp_path: Path) -> Path:
    """The tiny models plus `broken`, a copy of the GPT whose weights were cut short."""
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_folder, root)
    broken = root / "broken"
    shutil.copytree(checkpoint_folder / "gpt-tiny", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return root
