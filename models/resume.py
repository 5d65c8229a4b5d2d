"""The resume state: `train_state.safetensors`, one file rewritten at every evaluation, holding
all that a killed run needs to continue exactly as if it had not stopped: the weights, AdamW's
moments, every random generator and the last drift reference as tensors, and in the header
the settings, the counters and the tokenizer.

One file for tensors and counters alike, written atomically: a kill can never pair one
evaluation's weights with another's counters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from models.checkpoint import (
    Model,
    atomic_write_bytes,
    header_metadata,
    load_weights,
    tensors_to_bytes,
)
from models.config import TrainConfig, TrainingError
from models.tokenizer import TextTokenizer, tokenizer_from_dict

STATE_FILE = "train_state.safetensors"
STATE_META_KEY = "train_state"  # the header entry holding settings, counters and tokenizer
DRIFT_KEY = "drift.previous"


@dataclass
class TrainState:
    """The loop's counters and history: what a resumed run needs besides the tensors."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SavedState:
    """A state file's contents: its header entry, and its tensors by name."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def tokenizer(self) -> TextTokenizer | None:
        """The saved run's vocabulary, or None from a state file that holds none: such a run
        was char-level, and the text gives back the same vocabulary."""
        saved = self.meta.get("tokenizer")
        return None if saved is None else tokenizer_from_dict(saved)


def rng_key(name: str, index: int) -> str:
    """Key of generator `index` in the state; index 0 keeps the single-process name."""
    return f"rng.{name}" if index == 0 else f"rng.{name}.{index}"


def process_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's global generators: they draw dropout masks and differ per rank."""
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def save_state(
    out: Path,
    *,
    cfg: TrainConfig,
    state: TrainState,
    tokenizer: TextTokenizer,
    model: Model,
    optimizer: torch.optim.Optimizer,
    rng_states_by_rank: Sequence[dict[str, torch.Tensor]],
    batch_generators: Sequence[torch.Generator],
    previous_distributions: torch.Tensor | None,
) -> None:
    """Write the state file into `out`, replacing the last one."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, slots in optimizer.state_dict()["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = value
    for rank, states in enumerate(rng_states_by_rank):
        for name, value in states.items():
            tensors[rng_key(name, rank)] = value
    for slot, generator in enumerate(batch_generators):
        tensors[rng_key("batches", slot)] = generator.get_state()
    if previous_distributions is not None:
        tensors[DRIFT_KEY] = previous_distributions
    meta = {"config": asdict(cfg), "state": asdict(state), "tokenizer": tokenizer.to_dict()}
    data = tensors_to_bytes(tensors, {STATE_META_KEY: json.dumps(meta)})
    atomic_write_bytes(out / STATE_FILE, data)


def read_state_file(out: str | Path) -> bytes:
    try:
        return (Path(out) / STATE_FILE).read_bytes()
    except FileNotFoundError:
        raise TrainingError(f"nothing to resume in {out}: no {STATE_FILE}") from None


def read_state(out: str | Path) -> SavedState:
    """The state saved in `out`. Every rank reads it, so under torchrun on several machines
    --out must be on a filesystem they share."""
    data = read_state_file(out)
    return SavedState(json.loads(header_metadata(data)[STATE_META_KEY]), load_safetensors(data))


def saved_state_meta(out: str | Path) -> dict[str, Any]:
    """The settings, counters and tokenizer saved with the last state in `out`."""
    return json.loads(header_metadata(read_state_file(out))[STATE_META_KEY])


def resumed_config(
    out: str | Path, device: str | None = None, precision: str | None = None
) -> TrainConfig:
    """A resumed run takes its settings from the saved state; only the device and the
    precision may change, the hardware's choices: the state holds fp32 weights and moments
    whatever the precision, and `auto` picks it anew for the device the run continues on. (A
    state saved before the setting existed resumes at `auto`.)"""
    saved = saved_state_meta(out)["config"]
    if device:
        saved["device"] = device
    if precision:
        saved["precision"] = precision
    return TrainConfig(**saved)


def restore_state(
    saved: SavedState,
    *,
    model: Model,
    optimizer: torch.optim.Optimizer,
    batch_generators: Sequence[torch.Generator],
    rank: int,
    device: torch.device,
) -> tuple[TrainState, torch.Tensor | None]:
    """Load `saved` into the model, optimizer and generators, this process's global generators
    included; returns the counters and the drift reference."""
    tensors = saved.tensors
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim = optimizer.state_dict()
    optim["state"] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optim["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optim)
    # A rank the saved run did not have (it ran on fewer processes) keeps its fresh seed: its
    # dropout masks then differ from an uninterrupted run's, its batches do not.
    if rng_key("torch", rank) in tensors:
        torch.set_rng_state(tensors[rng_key("torch", rank)])
    if rng_key("cuda", rank) in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[rng_key("cuda", rank)], device)
    for slot, generator in enumerate(batch_generators):
        generator.set_state(tensors[rng_key("batches", slot)])
    return TrainState(**saved.meta["state"]), tensors.get(DRIFT_KEY)


def drop_log_records_after(log: Path, step: int) -> None:
    """Keep the JSONL log's records up to `step`: a resumed run logs the later ones again as
    it repeats those evaluations."""
    if not log.is_file():
        return
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    atomic_write_bytes(log, "".join(line + "\n" for line in kept).encode())
