"""The models served, one per checkpoint folder: loading, looking up, reloading, stopping.

Loading runs off the event loop; every model gets an engine of its own (service.engine).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import torch

from models.checkpoint import MANIFEST_FILE, load_checkpoint
from models.dataset import cache_root
from models.device import resolve_device
from service.engine import Engine, EngineConfig
from service.engine.metrics import EngineMetrics
from service.engine.runners import compile_blocker
from service.exceptions import NoModelsLoadedError, NotReadyError, UnknownModelError
from service.loaded_model import LoadedModel, prepare_model
from service.metrics import ENGINE_SOURCES
from service.schemas import ModelInfo
from service.settings import Settings, torch_threads_for

log = logging.getLogger(__name__)

KEEPS_SERVING = "; the loaded version keeps serving"
SWITCH_INTERVAL_S = 0.0001


def decode_path(settings: Settings, device: torch.device) -> tuple[bool, str]:
    """Whether the GPT decode step is compiled on `device`, and why, in words."""
    if settings.compile_decode is False:
        return False, "eager, as set"
    blocker = compile_blocker(device)
    if blocker is None:
        return True, "compiled after start-up; /ready answers 503 until it is"
    if settings.compile_decode:
        log.warning("TINYGPT_COMPILE_DECODE is on but %s: decoding eagerly", blocker)
    return False, f"eager ({blocker}; compiled decoding measured 1.6-3.7x faster)"


def decode_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    """The GPT decode step's precision on `device`: bf16 where auto finds it on CUDA, where
    it halves the weights and the KV cache to read per token and the logprobs stay within a
    few hundredths of float32's (tests/service/test_runners.py); float32 elsewhere, where
    CPU decoding in bf16 would change the text against the float32 model."""
    if settings.decode_dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, settings.decode_dtype)


def checkpoint_folders(root: str | Path) -> list[Path]:
    """Every folder under `root` by name (hidden ones aside): each should be a checkpoint."""
    root = Path(root)
    if not root.is_dir():
        raise NoModelsLoadedError(
            f"checkpoint folder {root} does not exist; point --checkpoints or "
            "TINYGPT_CHECKPOINTS at the folder that holds the model folders"
        )
    folders = sorted(
        path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    if not folders:
        raise NoModelsLoadedError(
            f"no checkpoint under {root}: each model is a folder holding {MANIFEST_FILE}; "
            "train one with `tinygpt train` or point --checkpoints elsewhere"
        )
    return folders


@dataclass
class Scan:
    """What one pass over the checkpoint folders found."""

    fresh: dict[str, LoadedModel] = field(default_factory=dict)  # new or changed, engine started
    refused: dict[str, str] = field(default_factory=dict)  # folder name -> why
    unchanged: list[str] = field(default_factory=list)


class ModelRegistry:
    """The models served: every checkpoint folder under `settings.checkpoints`, each with its
    engine. Loading, reloading and unloading take turns (one lock), so two reloads never
    interleave and every engine that stops being served is stopped."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self.lifecycle = anyio.Lock()
        self.retired: list[Engine] = []  # replaced by a reload: finishing their requests
        self.compile_decode = False  # whether engines compile their decode step: see load()
        self.decode_dtype = torch.float32  # their decode precision: see load()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._models)

    @property
    def model_ids(self) -> list[str]:
        return list(self._models)

    @property
    def pending(self) -> list[str]:
        """The models still warming up (compiling their decode step)."""
        return [m.id for m in self._models.values() if not m.engine.warmed.is_set()]

    async def load(self) -> None:
        """Load every checkpoint off the event loop; refuses (raises) when none loads."""
        threads = torch_threads_for(self.settings)
        torch.set_num_threads(threads)
        log.info("model work on %d torch thread(s) (TINYGPT_TORCH_THREADS)", threads)
        # A compiled CPU step runs without the GIL while the event loop streams tokens (see
        # service.engine.aot); when it ends, its thread waits for the loop to let go of the
        # GIL, for up to the switch interval: 0.1 ms, not Python's 5 (measured at 32 streams:
        # the decode thread busy 0.85 of the time, against 0.79 at 0.5 ms and 0.76 at 5).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        # Inductor's compiled graphs persist here, so a restart compiles in seconds.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
        # Decided once: reloads use the same settings and device.
        device = resolve_device(self.settings.device)
        self.compile_decode, why = decode_path(self.settings, device)
        log.info("decode step: %s (TINYGPT_COMPILE_DECODE)", why)
        self.decode_dtype = decode_dtype(self.settings, device)
        log.info(
            "decode precision: %s (TINYGPT_DECODE_DTYPE)",
            str(self.decode_dtype).removeprefix("torch."),
        )
        async with self.lifecycle:
            scan = await anyio.to_thread.run_sync(self.scan, {})
            if not scan.fresh:
                raise NoModelsLoadedError(
                    f"no checkpoint under {self.settings.checkpoints} could be loaded: "
                    + "; ".join(f"{name}: {why}" for name, why in scan.refused.items())
                )
            self._models = scan.fresh
        ENGINE_SOURCES.add(id(self), self.engine_metrics)

    async def reload(self) -> Scan:
        """Load every folder anew and swap in the models whose checkpoint verified and
        changed; the engines they replace finish what they run, in a thread, then stop.
        A folder that fails to load (or is gone) leaves its loaded version serving."""
        async with self.lifecycle:
            current = self.loaded_models()
            scan = await anyio.to_thread.run_sync(self.scan, current)
            # A changed model replaces its loaded version once it is warm, not before.
            for model in scan.fresh.values():
                await anyio.to_thread.run_sync(model.engine.warmed.wait)
            # One assignment: a request looks its model up once, so it sees the old or the new.
            self._models = {**current, **scan.fresh}
            self.retire([current[m].engine for m in scan.fresh if m in current])
        return scan

    def retire(self, engines: list[Engine]) -> None:
        self.retired = [e for e in self.retired if e.running] + engines
        for engine in engines:
            threading.Thread(
                target=engine.stop,
                kwargs={"drain": True, "timeout": self.settings.request_timeout + 5},
                name="reload-drain",
                daemon=True,
            ).start()

    async def unload(self) -> None:
        """Stop every engine, retired ones too (cancelling what is still generating), and
        forget the models."""
        async with self.lifecycle:
            ENGINE_SOURCES.remove(id(self))
            models, self._models = self._models, {}
            for engine in [*(m.engine for m in models.values()), *self.retired]:
                await anyio.to_thread.run_sync(engine.stop)
            self.retired = []

    def engine_metrics(self) -> dict[str, EngineMetrics]:
        return {model_id: model.engine.metrics for model_id, model in self._models.items()}

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_running=self.settings.max_running,
            max_waiting=self.settings.max_waiting,
            compile_decode=self.compile_decode,
            dtype=self.decode_dtype,
            stream_interval=self.settings.stream_interval,
        )

    def scan(self, current: dict[str, LoadedModel]) -> Scan:
        """Blocking: load and verify every folder (`load_checkpoint` checks the weights'
        hashes) and start an engine for each one that is new or changed from `current`."""
        device = resolve_device(self.settings.device)
        log.info("loading checkpoints from %s onto %s", self.settings.checkpoints, device)
        folders = checkpoint_folders(self.settings.checkpoints)
        scan = Scan()
        for model_id in sorted(current.keys() - {folder.name for folder in folders}):
            scan.refused[model_id] = "its checkpoint folder is gone" + KEEPS_SERVING
        for folder in folders:
            try:
                # The weights stay ordinary tensors, usable outside inference mode too.
                checkpoint = load_checkpoint(folder, device)
                old = current.get(folder.name)
                if old is not None and old.checkpoint.manifest == checkpoint.manifest:
                    scan.unchanged.append(folder.name)
                    continue
                with torch.inference_mode():
                    model = prepare_model(folder.name, checkpoint, device, self.engine_config())
                model.engine.start()
            # One bad folder must not take the others down: whatever the reason, log it.
            except Exception as err:
                keeps = KEEPS_SERVING if folder.name in current else ""
                scan.refused[folder.name] = f"{err}{keeps}"
                log.error("skipping checkpoint %s: %s", folder, err)
            else:
                scan.fresh[model.id] = model
                log.info(
                    "loaded model %s (%s, %d parameters) on %s",
                    model.id,
                    model.kind,
                    model.parameters,
                    device,
                )
        return scan

    # -- lookups --------------------------------------------------------------------------

    def loaded_models(self) -> dict[str, LoadedModel]:
        if not self._models:
            raise NotReadyError("the models are still loading; retry when GET /ready says 200")
        return self._models

    def get(self, model_id: str, param: str = "model") -> LoadedModel:
        models = self.loaded_models()
        try:
            return models[model_id]
        except KeyError:
            available = ", ".join(sorted(models))
            raise UnknownModelError(
                f"model {model_id!r} is not loaded; available models: {available}",
                param=param,
            ) from None

    def describe(self) -> list[ModelInfo]:
        return [model.describe() for model in self.loaded_models().values()]
