"""POST /admin/reload: load every checkpoint folder anew and swap in what verified.

Each folder is loaded and verified (`load_checkpoint` checks the weights' hashes). A model
whose checkpoint verified and changed gets a new engine and is swapped in; requests already
running on its old engine finish there, and the old engine is drained off the event loop.
A folder that fails verification is refused with its reason, and its old version (if any)
keeps serving. A checkpoint whose manifest did not change is left as it is.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import anyio
import msgspec
import torch

from models.checkpoint import load_checkpoint
from models.device import resolve_device
from service.registry import LoadedModel, ModelRegistry, checkpoint_folders, prepare_model

log = logging.getLogger(__name__)


class RefusedCheckpoint(msgspec.Struct):
    model: str
    reason: str


class ReloadResponse(msgspec.Struct):
    reloaded: list[str]
    refused: list[RefusedCheckpoint]
    unchanged: list[str]
    models: list[str]  # every model served after the reload


@dataclass
class ReloadPlan:
    fresh: dict[str, LoadedModel] = field(default_factory=dict)
    refused: list[RefusedCheckpoint] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def plan_reload(registry: ModelRegistry, current: dict[str, LoadedModel]) -> ReloadPlan:
    """Blocking: load and verify every folder; start engines for the changed ones."""
    device = resolve_device(registry.settings.device)
    plan = ReloadPlan()
    seen = set()
    for folder in checkpoint_folders(registry.settings.checkpoints):
        seen.add(folder.name)
        try:
            checkpoint = load_checkpoint(folder, device)
            old = current.get(folder.name)
            if old is not None and old.checkpoint.manifest == checkpoint.manifest:
                plan.unchanged.append(folder.name)
                continue
            with torch.inference_mode():
                model = prepare_model(folder.name, checkpoint, device, registry.engine_config())
            model.engine.start()
        except Exception as err:
            keeps = "; the loaded version keeps serving" if folder.name in current else ""
            plan.refused.append(RefusedCheckpoint(folder.name, f"{err}{keeps}"))
            log.error("reload refused checkpoint %s: %s", folder, err)
        else:
            plan.fresh[model.id] = model
    for model_id in current.keys() - seen:
        reason = "its checkpoint folder is gone; the loaded version keeps serving"
        plan.refused.append(RefusedCheckpoint(model_id, reason))
    return plan


def drain(models: list[LoadedModel], timeout: float) -> None:
    for model in models:
        model.engine.stop(drain=True, timeout=timeout)
        log.info("reload: drained the previous engine of %s", model.id)


async def reload_models(registry: ModelRegistry) -> ReloadResponse:
    current = registry.loaded_models()
    plan = await anyio.to_thread.run_sync(plan_reload, registry, dict(current))
    replaced = [current[model_id] for model_id in plan.fresh if model_id in current]
    # One assignment: a request looks its model up once, so it sees the old or the new one.
    registry._models = {**current, **plan.fresh}
    for model_id in plan.fresh:
        registry._projections.pop(model_id, None)
    if replaced:
        # The old engines finish what they run (streams included), in a thread of their own.
        threading.Thread(
            target=drain,
            args=(replaced, registry.settings.request_timeout + 5),
            name="reload-drain",
            daemon=True,
        ).start()
    log.info(
        "reload: reloaded %s, refused %s, unchanged %s",
        sorted(plan.fresh),
        [r.model for r in plan.refused],
        plan.unchanged,
    )
    return ReloadResponse(
        reloaded=sorted(plan.fresh),
        refused=plan.refused,
        unchanged=sorted(plan.unchanged),
        models=registry.model_ids,
    )
