"""Measuring a model on a split: the full-pass loss (every target once, deterministic), the
sampled loss the trainer logs at each evaluation, and the drift between two evaluations.

The two losses differ in precision too. The full pass, the number reported and compared
(`val_loss` of the report and the manifest), runs in fp32 whatever the training precision: the
service serves the fp32 weights, so that is the loss it gets from them. The sampled losses run
in the training precision: they compare evaluations of one run with one another (and pick its
best checkpoint), which the same rounding at each leaves fair, at the training's speed.
"""

from __future__ import annotations

import torch

from models.checkpoint import Model
from models.config import TrainConfig
from models.data import Tokens, get_batch, sequential_batches
from models.device import autocast_for
from models.distributed import SINGLE_PROCESS, DistEnv, all_sum


@torch.no_grad()
def full_pass_loss(
    model: Model, ids: Tokens, block_size: int, batch_size: int = 64
) -> tuple[float, int]:
    """Mean cross-entropy over every target of `ids`, in order: deterministic, no sampling,
    in the weights' own precision (no autocast)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in sequential_batches(ids, block_size, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count, count


@torch.no_grad()
def sampled_loss(
    model: Model,
    data: Tokens,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    precision: str,
    dist_env: DistEnv = SINGLE_PROCESS,
) -> float:
    """Mean loss over `eval_iters` random batches, drawn from a generator seeded per call, in
    the training `precision` (models.device.resolve_precision).

    Under DDP every rank draws the same batches and evaluates its share (batch i on rank
    i mod N); the all-reduced sum gives every rank the number a single process would get."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(cfg.eval_iters):
        x, y = get_batch(data, cfg.block_size, cfg.batch_size, generator)
        if i % dist_env.world_size == dist_env.rank:
            with autocast_for(device, precision):
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
    return all_sum(total, device) / cfg.eval_iters


def drift(previous: torch.Tensor, current: torch.Tensor) -> float:
    """How far a model's next-token distributions (N, V) moved between two evaluations: the
    L1 distance between matching rows, averaged; 0 when nothing moved, 2 at most."""
    return (current - previous).abs().sum(dim=-1).mean().item()
