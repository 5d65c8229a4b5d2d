"""The training timeline: what the token vectors looked like at step 0 and at every evaluation.

The trainer (models.train) records a snapshot at each evaluation, the first of which comes
before any update: the rows of the most frequent tokens (all of a vocabulary of up to
`MAX_TOKENS`) of whatever the model's `timeline_snapshot` gives -- a GPT's token embeddings, a
bigram's probability table restricted to those rows and columns -- with the step, the sampled
losses and what the model measures besides (the bigram: its distance to the empirical table).

All of it is one file, `timeline.safetensors` in the checkpoint folder, rewritten atomically
at every evaluation and bounded: at most `MAX_SNAPSHOTS`, and under `MAX_FILE_BYTES` whatever
the length of the run. When a snapshot would pass the bound, the snapshots are thinned evenly
(every other evaluation goes); step 0, the newest one and the best one (the weights the
checkpoint holds) always stay. A resumed run reads the file back (`resumed_timeline`).

Recording reads the weights and draws no random numbers: a run trains exactly as it would
without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from models.checkpoint import (
    Model,
    atomic_write_bytes,
    header_metadata,
    model_kind,
    tensors_to_bytes,
)
from models.data import CHUNK_BYTES, Tokens, TrainingData

TIMELINE_FILE = "timeline.safetensors"
TIMELINE_META_KEY = "timeline"
TIMELINE_FORMAT_VERSION = 1
MAX_TOKENS = 256  # rows per snapshot: the most frequent tokens of a larger vocabulary
MAX_SNAPSHOTS = 30
MAX_FILE_BYTES = 5_000_000
# What the snapshots' tensors may take of the file; the rest is plenty for the header (a few
# hundred bytes per snapshot and the token ids).
SNAPSHOT_BUDGET = MAX_FILE_BYTES - 100_000
# Step 0, the best and the newest: a timeline always has room for these three.
MIN_SNAPSHOTS = 3


class TimelineError(ValueError):
    """A timeline file is unreadable, or not one this version writes."""


@dataclass
class Snapshot:
    step: int
    metrics: dict[str, float]  # train_loss, val_loss (sampled) and what the model adds
    vectors: torch.Tensor  # (K, D) float32: row r belongs to token token_ids[r]


@dataclass
class Timeline:
    """The snapshots of one run, oldest first, of the tokens `token_ids` (chosen at the first
    snapshot). Evaluations on the grid of multiples of `eval_interval * stride` are kept; the
    stride doubles whenever the snapshots would not fit."""

    model: str  # the model's kind, "bigram" or "gpt": what the rows are
    vocab_size: int
    eval_interval: int
    token_ids: torch.Tensor | None = None  # (K,) int64
    stride: int = 1
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [s.step for s in self.snapshots]

    @property
    def capacity(self) -> int:
        """How many snapshots fit: MAX_SNAPSHOTS, fewer where their rows are large."""
        if not self.snapshots:
            return MAX_SNAPSHOTS
        size = self.snapshots[0].vectors.nbytes
        return max(MIN_SNAPSHOTS, min(MAX_SNAPSHOTS, SNAPSHOT_BUDGET // max(1, size)))

    def record(
        self, model: Model, data: TrainingData, evaluation: dict[str, Any], best_step: int
    ) -> None:
        """Snapshot `model` as of the evaluation `evaluation` (a training-log record); the
        snapshot of `best_step` is kept whatever the thinning."""
        if self.token_ids is None:
            self.token_ids = self.choose_tokens(model, data)
        vectors, measures = model.timeline_snapshot(data, self.token_ids)
        metrics = {"train_loss": evaluation["train_loss"], "val_loss": evaluation["val_loss"]}
        self.add(Snapshot(evaluation["step"], {**metrics, **measures}, vectors), best_step)

    def choose_tokens(self, model: Model, data: TrainingData) -> torch.Tensor:
        """The rows to record: the MAX_TOKENS most frequent tokens, or fewer where even
        MIN_SNAPSHOTS snapshots of their rows would not fit in the file."""
        count = min(self.vocab_size, MAX_TOKENS)
        while True:
            ids = recorded_tokens(data, self.vocab_size, count)
            vectors, _ = model.timeline_snapshot(data, ids)
            if count == 1 or MIN_SNAPSHOTS * vectors.nbytes <= SNAPSHOT_BUDGET:
                return ids
            count //= 2

    def add(self, snapshot: Snapshot, best_step: int) -> None:
        """Append `snapshot`, then thin: keep those on the grid, the newest and `best_step`'s,
        doubling the grid's spacing until they fit."""
        self.snapshots.append(snapshot)
        newest = snapshot.step
        while True:
            grid = self.eval_interval * self.stride
            kept = [
                s for s in self.snapshots if s.step % grid == 0 or s.step in (newest, best_step)
            ]
            if len(kept) <= self.capacity:
                break
            self.stride *= 2
        self.snapshots = kept

    def drop_after(self, step: int) -> None:
        """Forget the snapshots after `step`: a resumed run records those evaluations again."""
        self.snapshots = [s for s in self.snapshots if s.step <= step]

    # -- the file ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        meta = {
            "format_version": TIMELINE_FORMAT_VERSION,
            "model": self.model,
            "vocab_size": self.vocab_size,
            "eval_interval": self.eval_interval,
            "stride": self.stride,
            "snapshots": [{"step": s.step, **s.metrics} for s in self.snapshots],
        }
        assert self.token_ids is not None, "a timeline with snapshots has chosen its tokens"
        tensors = {
            "token_ids": self.token_ids.clone(),
            "vectors": torch.stack([s.vectors for s in self.snapshots]),  # (S, K, D)
        }
        return tensors_to_bytes(tensors, {TIMELINE_META_KEY: json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> Timeline:
        """The timeline in `data`; TimelineError naming `source` if it is not one."""
        try:
            meta = json.loads(header_metadata(data)[TIMELINE_META_KEY])
            tensors = load_safetensors(data)
            check_contents(meta, tensors, source)
            vectors, token_ids = tensors["vectors"], tensors["token_ids"]
            snapshots = [
                Snapshot(
                    step=record["step"],
                    metrics={k: v for k, v in record.items() if k != "step"},
                    vectors=vectors[i].float(),
                )
                for i, record in enumerate(meta["snapshots"])
            ]
            return cls(
                model=meta["model"],
                vocab_size=meta["vocab_size"],
                eval_interval=meta["eval_interval"],
                token_ids=token_ids.long(),
                stride=meta["stride"],
                snapshots=snapshots,
            )
        except TimelineError:
            raise
        except (KeyError, TypeError, ValueError, SafetensorError) as err:
            raise TimelineError(f"{source} is not a training timeline ({err})") from err


def check_contents(meta: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> None:
    """That a file's header and tensors make a timeline this version writes: ValueError (or
    KeyError, TypeError) saying what does not."""
    version = meta["format_version"]
    if version != TIMELINE_FORMAT_VERSION:
        raise TimelineError(
            f"{source}: timeline format {version!r}, this build reads "
            f"{TIMELINE_FORMAT_VERSION}; retrain with this version"
        )
    records, vectors, token_ids = meta["snapshots"], tensors["vectors"], tensors["token_ids"]
    shape = (len(records), len(token_ids))
    if vectors.dim() != 3 or vectors.shape[:2] != shape:
        raise ValueError(f"{shape} snapshots x tokens for rows of shape {tuple(vectors.shape)}")
    if len(records) > MAX_SNAPSHOTS or len(token_ids) > MAX_TOKENS:
        raise ValueError(f"more than {MAX_SNAPSHOTS} snapshots or {MAX_TOKENS} tokens")
    if not ((token_ids >= 0) & (token_ids < meta["vocab_size"])).all():
        raise ValueError(f"token ids outside the vocabulary of {meta['vocab_size']}")
    for record in records:
        for key in ("step", "train_loss", "val_loss"):
            if not isinstance(record[key], int | float):
                raise ValueError(f"snapshot {key} {record[key]!r} is not a number")


def recorded_tokens(data: TrainingData, vocab_size: int, count: int) -> torch.Tensor:
    """All token ids of a vocabulary of at most `count`; else the `count` tokens most frequent
    in the training split, most frequent first (ties by id)."""
    if vocab_size <= count:
        return torch.arange(vocab_size)
    counts = data.derived("token_counts", lambda: token_counts(data.train, vocab_size))
    return torch.sort(counts, descending=True, stable=True).indices[:count]


def token_counts(ids: Tokens, vocab_size: int, chunk: int = CHUNK_BYTES) -> torch.Tensor:
    """counts[i] = how often token i occurs in `ids`, `chunk` tokens at a time."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(ids), chunk):
        piece = np.asarray(ids[start : start + chunk], dtype=np.int64)
        counts += np.bincount(piece, minlength=vocab_size)
    return torch.from_numpy(counts)


def new_timeline(model: Model, eval_interval: int) -> Timeline:
    return Timeline(model_kind(model), model.config.vocab_size, eval_interval)


def save_timeline(folder: Path, timeline: Timeline) -> None:
    atomic_write_bytes(folder / TIMELINE_FILE, timeline.to_bytes())


def read_timeline(folder: str | Path) -> Timeline | None:
    """The timeline in checkpoint folder `folder`; None if it has none (a run of an older
    version); TimelineError if the file is no timeline, or larger than this version writes."""
    path = Path(folder) / TIMELINE_FILE
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise TimelineError(
                f"{path} holds {size:,} bytes, more than the {MAX_FILE_BYTES:,} a timeline "
                "of this version takes; retrain with this version"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return Timeline.from_bytes(data, str(path))


def resumed_timeline(folder: Path, step: int) -> Timeline | None:
    """The timeline of the run saved in `folder`, as of the saved `step`: a snapshot written
    after the state was (a kill between the two files) goes, to be recorded again."""
    timeline = read_timeline(folder)
    if timeline is not None:
        timeline.drop_after(step)
    return timeline
