"""A full disk or an unwritable checkpoint folder stops the trainer with a clear message and
leaves the previous checkpoint loadable, with no temporary files left behind.

Tests run as root here, where chmod does not stop writes, so the faults are injected where
models.checkpoint writes: ENOSPC part-way through a file, EACCES when creating one.
"""

from __future__ import annotations

import errno
import io
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from models import checkpoint as checkpoint_module
from models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint
from models.cli import main


def train(small_corpus: Path, out: Path, seed: int) -> int:
    return main(
        ["train", "bigram", "--data", str(small_corpus), "--out", str(out), "--steps", "20",
         "--eval-interval", "10", "--eval-iters", "2", "--batch-size", "8", "--block-size", "16",
         "--seed", str(seed), "--device", "cpu"]
    )  # fmt: skip


class FullDisk(io.RawIOBase):
    """A file on a disk that fills up after half of the first write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        os.write(self.fd, bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, only: str = "") -> None:
    """Every file the checkpoint module writes (or only those whose name has `only`) hits a
    full disk."""
    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and only in os.readlink(f"/proc/self/fd/{fd}"):
            return FullDisk(fd)
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "fdopen", fdopen)


def lock_the_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    def mkstemp(*args: Any, dir: str | os.PathLike | None = None, **kwargs: Any) -> Any:  # noqa: A002
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        (fill_the_disk, "No space left on device"),
        (partial(fill_the_disk, only=WEIGHTS_FILE), "No space left on device"),
        (lock_the_folder, "Permission denied"),
    ],
    ids=["full disk", "full disk while writing the weights", "unwritable folder"],
)
def test_a_failed_save_keeps_the_previous_checkpoint(
    fault, problem: str, small_corpus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "run"
    assert train(small_corpus, out, seed=1) == 0
    before = {name: (out / name).read_bytes() for name in (WEIGHTS_FILE, MANIFEST_FILE)}
    capsys.readouterr()

    fault(monkeypatch)
    assert train(small_corpus, out, seed=2) == 2  # another seed: other weights, if they got out
    monkeypatch.undo()

    err = capsys.readouterr().err
    assert f"tinygpt: error: training stopped: {problem}" in err
    assert str(out) in err and "--resume" in err
    assert "Traceback" not in err
    assert {name: (out / name).read_bytes() for name in before} == before
    checkpoint = load_checkpoint(out)  # verifies the weights against the manifest's sha256
    assert (
        checkpoint.manifest["weights_sha256"] == json.loads(before[MANIFEST_FILE])["weights_sha256"]
    )
    leftovers = [p.name for p in out.iterdir() if p.name.endswith((".tmp", ".next"))]
    assert leftovers == []
