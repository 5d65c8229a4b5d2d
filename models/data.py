"""Corpus loading, the contiguous 90/10 train/val split, and batch sampling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TRAIN_FRACTION = 0.9


class CorpusError(ValueError):
    """The corpus path is missing, empty or not UTF-8 text."""


def load_corpus(path: str | Path) -> str:
    """Read a UTF-8 text file, or every `.txt` file of a folder in name order, joined."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"{path} is a folder with no .txt files; point --data at text")
    elif path.is_file():
        files = [path]
    else:
        raise CorpusError(f"{path} does not exist; --data takes a UTF-8 text file or a folder")
    parts = []
    for file in files:
        try:
            parts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise CorpusError(
                f"{file} is not UTF-8 text ({err.reason} at byte {err.start})"
            ) from err
    text = "".join(parts)
    if len(text) < 2:
        raise CorpusError(f"{path} holds fewer than two characters; nothing to learn from")
    return text


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_val_split(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First 90% of the tokens for training, the last 10% for validation (contiguous)."""
    n = int(TRAIN_FRACTION * len(ids))
    return ids[:n], ids[n:]


def split_named(ids: torch.Tensor, split: str) -> torch.Tensor:
    train, val = train_val_split(ids)
    return {"train": train, "val": val, "all": ids}[split]


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block_size` tokens and their one-step-shifted targets."""
    block_size = min(block_size, len(data) - 1)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]  # (B, T)
    y = data[starts[:, None] + offsets + 1]  # (B, T)
    return x, y


def sequential_batches(data: torch.Tensor, block_size: int, batch_size: int):
    """Non-overlapping windows covering every target of `data` exactly once, in order."""
    n_targets = len(data) - 1
    windows = [
        (start, min(block_size, n_targets - start)) for start in range(0, n_targets, block_size)
    ]
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        # Windows share one length per batch: the last, shorter one gets a batch of its own.
        for length in sorted({length for _, length in group}, reverse=True):
            starts = torch.tensor([s for s, n in group if n == length])
            offsets = torch.arange(length)
            yield data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]
