"""Checkpoint folders: `model.safetensors` (weights) plus `manifest.json` (everything else).

Every file is written atomically (temp file, fsync, rename). The manifest records the sha256 of
the weights, so a weights file that does not belong to its manifest is refused on load. The
manifest is renamed into place last and names the weights by hash: a kill between the two
renames leaves a `manifest.json.next` that matches the new weights, which the loader honours.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from models.bigram import BigramConfig, BigramLanguageModel
from models.gpt import GPT, GPTConfig
from models.tokenizer import TextTokenizer, tokenizer_from_dict

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
PENDING_SUFFIX = ".next"

Model = BigramLanguageModel | GPT
ModelKind = Literal["bigram", "gpt"]

# mkstemp creates owner-only files; checkpoints get the permissions a plain open() would give.
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, from another format version, or tampered."""


@dataclass
class Checkpoint:
    path: Path
    model: Model
    tokenizer: TextTokenizer
    manifest: dict[str, Any]

    @property
    def kind(self) -> ModelKind:
        return self.manifest["kind"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def model_kind(model: Model) -> ModelKind:
    return "gpt" if isinstance(model, GPT) else "bigram"


def build_model(kind: str, config: dict[str, Any]) -> Model:
    if kind == "gpt":
        return GPT(GPTConfig(**config))
    if kind == "bigram":
        return BigramLanguageModel(BigramConfig(**config))
    raise ValueError(f"unknown model kind {kind!r}")


def tensors_to_bytes(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> bytes:
    """Serialise tensors, storing a tensor shared under several names (tied weights) once;
    `metadata` goes into the file's header."""
    unique: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.detach().cpu().contiguous()
    return save_safetensors(unique, metadata=metadata)


def header_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of safetensors bytes: an 8-byte little-endian header length, then
    the JSON header."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})


def save_checkpoint(
    path: str | Path,
    model: Model,
    tokenizer: TextTokenizer,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model's weights and manifest into folder `path`; returns the manifest."""
    path = Path(path)
    weights = tensors_to_bytes(model.state_dict())
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": model_kind(model),
        "config": asdict(model.config),
        "tokenizer": tokenizer.to_dict(),
        "metrics": metrics,
        "weights_sha256": sha256_bytes(weights),
        "torch_version": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    pending = path / (MANIFEST_FILE + PENDING_SUFFIX)
    atomic_write_json(pending, manifest)
    try:
        atomic_write_bytes(path / WEIGHTS_FILE, weights)
    except BaseException:
        # The old weights are still in place (a full disk, say): their manifest stays the
        # committed one, and the pending one, which matches nothing, goes.
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, path / MANIFEST_FILE)
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} is unreadable ({err})"
        ) from err


def verified_manifest(path: Path, weights: bytes) -> dict[str, Any]:
    """The manifest that belongs to `weights`: the committed one, else a pending one."""
    digest = sha256_bytes(weights)
    candidates = [path / MANIFEST_FILE, path / (MANIFEST_FILE + PENDING_SUFFIX)]
    manifests = [read_manifest(p) for p in candidates if p.is_file()]
    if not manifests:
        raise CheckpointError(
            f"checkpoint {path}: no {MANIFEST_FILE}; is this a checkpoint folder?"
        )
    for manifest in manifests:
        if manifest.get("weights_sha256") == digest:
            return manifest
    raise CheckpointError(
        f"checkpoint {path}: {WEIGHTS_FILE} does not match the sha256 in {MANIFEST_FILE} "
        f"(file {digest[:12]}..., manifest {str(manifests[0].get('weights_sha256'))[:12]}...); "
        "the weights are truncated or were modified: retrain or restore the folder"
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint folder; raises CheckpointError naming the folder."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a folder")
    try:
        weights = (path / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS_FILE} is missing") from None
    manifest = verified_manifest(path, weights)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {version!r}, this build reads {FORMAT_VERSION}"
        )
    try:
        model = build_model(manifest["kind"], manifest["config"])
        tokenizer = tokenizer_from_dict(manifest["tokenizer"])
        load_weights(model, load_safetensors(weights))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: manifest and weights disagree ({err})") from err
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer and model vocab sizes differ")
    model.to(device).eval()
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, manifest=manifest)


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load weights saved by `tensors_to_bytes`: a tied tensor may be stored under one name."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for name in missing if name == "lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise ValueError(f"missing tensors {sorted(set(missing) - tied)}, unexpected {unexpected}")
