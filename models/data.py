"""Corpus reading, the contiguous 90/10 train/val split, and batch sampling.

A corpus is read in pieces (`read_corpus`), so that preparing one of several GB holds a few
MB of it at a time; token sequences are torch tensors, numpy arrays, or token files on disk
(`TokenFile`), from which a batch reads only the windows it draws.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAIN_FRACTION = 0.9
CHUNK_BYTES = 1 << 23  # 8 MiB of text per piece: large enough that per-piece costs vanish


class TokenFile:
    """Tokens `[start, start + count)` of a flat token file, read from disk on demand.

    Read with `pread` rather than memory-mapped: on this project's kernel a page fault maps
    a whole large folio, hundreds of KB, so 1,200 random windows through an `np.memmap` grew
    the process' RSS by 814 MB, and a long run's would grow to the file's size. A read holds
    only what it returns. Slicing gives a view; numpy reads a view whole through `__array__`.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, count: int, start: int = 0):
        self.path, self.dtype, self.count, self.start = Path(path), np.dtype(dtype), count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: slice) -> TokenFile:
        first, stop, step = key.indices(self.count)
        if step != 1:
            raise IndexError("a token file slices in steps of 1")
        return TokenFile(self.path, self.dtype, max(0, stop - first), self.start + first)

    def windows(self, starts: Sequence[int], length: int) -> np.ndarray:
        """(len(starts), length) array whose row r holds tokens starts[r] ... + length - 1."""
        out = np.empty((len(starts), length), dtype=self.dtype)
        with open(self.path, "rb") as f:
            for row, first in zip(out, starts, strict=True):
                offset = (self.start + first) * self.dtype.itemsize
                if os.preadv(f.fileno(), [memoryview(row).cast("B")], offset) != row.nbytes:
                    raise OSError(f"{self.path} is shorter than its manifest says")
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.windows([0], self.count)[0]
        return whole if dtype is None else whole.astype(dtype)


# A token sequence: a tensor, a numpy array, or a token file.
Tokens = torch.Tensor | np.ndarray | TokenFile


class CorpusError(ValueError):
    """The corpus path is missing, empty or not UTF-8 text."""


def corpus_files(path: str | Path) -> list[Path]:
    """The text files of a corpus: a UTF-8 text file, or every `.txt` of a folder by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"{path} is a folder with no .txt files; point --data at text")
        return files
    if path.is_file():
        return [path]
    raise CorpusError(f"{path} does not exist; --data takes a UTF-8 text file or a folder")


def complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that ends between two UTF-8 characters and not
    between a carriage return and what follows it (a CR LF must be read as one newline)."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # a lead byte or ASCII: the last character starts here
            width = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if back < width:
                end -= back
            break
    if end and data[end - 1] == 0x0D:
        end -= 1
    return end


def read_corpus(path: str | Path) -> Iterator[str]:
    """The corpus text in pieces of about CHUNK_BYTES, as reading each file whole in text
    mode would give it: files joined in name order, CR LF and lone CR read as LF."""
    chunk_bytes = CHUNK_BYTES
    for file in corpus_files(path):
        with open(file, "rb") as f:
            offset, pending = 0, b""  # file offset of `pending`, bytes carried to the next piece
            while True:
                block = f.read(chunk_bytes)
                data = pending + block
                if not data:
                    break
                end = complete_prefix(data) if block else len(data)
                try:
                    text = data[:end].decode("utf-8")
                except UnicodeDecodeError as err:
                    raise CorpusError(
                        f"{file} is not UTF-8 text ({err.reason} at byte {offset + err.start})"
                    ) from None
                offset, pending = offset + end, data[end:]
                if "\r" in text:
                    text = text.replace("\r\n", "\n").replace("\r", "\n")
                if text:
                    yield text


def load_corpus(path: str | Path) -> str:
    """Read a UTF-8 text file, or every `.txt` file of a folder in name order, joined."""
    text = "".join(read_corpus(path))
    if len(text) < 2:
        raise CorpusError(f"{path} holds fewer than two characters; nothing to learn from")
    return text


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_val_split(ids: Tokens) -> tuple[Tokens, Tokens]:
    """First 90% of the tokens for training, the last 10% for validation (contiguous)."""
    n = int(TRAIN_FRACTION * len(ids))
    return ids[:n], ids[n:]


def split_named(ids: Tokens, split: str) -> Tokens:
    train, val = train_val_split(ids)
    return {"train": train, "val": val, "all": ids}[split]


def windows(data: Tokens, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(len(starts), length) int64 tensor whose row r is data[starts[r] : starts[r] + length];
    from a token file only those tokens are read."""
    if isinstance(data, TokenFile):
        return torch.from_numpy(data.windows(starts.tolist(), length).astype(np.int64))
    index = starts[:, None] + torch.arange(length)
    if isinstance(data, torch.Tensor):
        return data[index].long()
    return torch.from_numpy(data[index.numpy()].astype(np.int64))


def as_tensor(data: Tokens) -> torch.Tensor:
    """The whole of `data` as an int64 tensor (for sequences that fit in memory)."""
    return windows(data, torch.zeros(1, dtype=torch.long), len(data))[0]


def get_batch(
    data: Tokens, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of `block_size` tokens and their one-step-shifted targets."""
    block_size = min(block_size, len(data) - 1)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    tokens = windows(data, starts, block_size + 1)  # (B, T + 1)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def sequential_batches(data: Tokens, block_size: int, batch_size: int):
    """Non-overlapping windows covering every target of `data` exactly once, in order."""
    n_targets = len(data) - 1
    spans = [
        (start, min(block_size, n_targets - start)) for start in range(0, n_targets, block_size)
    ]
    for i in range(0, len(spans), batch_size):
        group = spans[i : i + batch_size]
        # Windows share one length per batch: the last, shorter one gets a batch of its own.
        for length in sorted({length for _, length in group}, reverse=True):
            starts = torch.tensor([s for s, n in group if n == length])
            tokens = windows(data, starts, length + 1)
            yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def pair_counts(ids: Tokens, vocab_size: int, chunk: int = CHUNK_BYTES) -> torch.Tensor:
    """counts[i, j] = how often token j follows token i in `ids`: a bincount over pair indices
    i * V + j, taken `chunk` tokens at a time so that a split on disk is never whole in
    memory."""
    cells = vocab_size * vocab_size
    counts = np.zeros(cells, dtype=np.int64)
    for start in range(0, len(ids) - 1, chunk):
        piece = np.asarray(ids[start : start + chunk + 1], dtype=np.int64)
        counts += np.bincount(piece[:-1] * vocab_size + piece[1:], minlength=cells)
    return torch.from_numpy(counts).view(vocab_size, vocab_size)


@dataclass(eq=False)
class TrainingData:
    """What a model's training hooks see of the corpus: the training split, and the
    validation tokens that evaluation reads (the whole split, or its first part)."""

    train: Tokens
    val: Tokens
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)

    def derived(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per run: a pass over a large training split takes seconds, and
        the hooks ask at every evaluation."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]
