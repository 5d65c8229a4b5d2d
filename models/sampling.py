"""Batched next-token sampling with per-row parameters and per-row random generators.

Every row draws exactly one uniform number per step from its own generator, so a request's
output depends only on its own seed and parameters, never on what else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


def penalize_repetition(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the sequence: shrink positive logits, grow
    negative ones. `seen` is a (B, V) bool mask, `penalty` a (B,) tensor (1 = off)."""
    factor = torch.where(seen, penalty[:, None], torch.ones_like(logits))
    return torch.where(logits > 0, logits / factor, logits * factor)


def filtered_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
) -> torch.Tensor:
    """Probabilities after temperature, top-k, top-p and min-p, one setting per row.

    logits (B, V); temperature, top_p, min_p (B,) floats; top_k (B,) ints with 0 meaning off.
    Rows with temperature 0 are left for the caller to take greedily (their probs are unused).
    """
    B, V = logits.shape
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    logits = logits.float() / t[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    rank = torch.arange(V, device=logits.device).expand(B, V)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V))
    remove = rank >= k[:, None]
    sorted_probs = F.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    # top-p: drop a token once the tokens before it already cover top_p of the mass
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove |= mass_before > top_p[:, None]
    # min-p: drop tokens less likely than min_p times the most likely one
    remove |= sorted_probs < min_p[:, None] * sorted_probs[:, :1]
    remove[:, 0] = False  # the most likely token always survives
    sorted_probs = sorted_probs.masked_fill(remove, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(sorted_probs).scatter_(-1, order, sorted_probs)


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Inverse-CDF sampling: one uniform from each row's own generator. Returns (B,) ids."""
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(dim=-1)
    u = u.to(probs.device) * cdf[:, -1]
    ids = torch.searchsorted(cdf, u[:, None]).squeeze(-1)
    return ids.clamp_(max=probs.size(-1) - 1)


def sample_next(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the next token of every row of `logits` (B, V) under that row's parameters."""
    device = logits.device

    def column(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    temperature = column([p.temperature for p in params], torch.float32)
    if seen is not None:
        penalty = column([p.repetition_penalty for p in params], torch.float32)
        logits = penalize_repetition(logits.float(), seen, penalty)
    probs = filtered_probs(
        logits,
        temperature,
        column([p.top_k or 0 for p in params], torch.long),
        column([p.top_p for p in params], torch.float32),
        column([p.min_p for p in params], torch.float32),
    )
    sampled = draw(probs, generators)
    return torch.where(temperature == 0, logits.argmax(dim=-1), sampled)


def seeded_generator(seed: int | None) -> torch.Generator:
    """A generator of its own per request: seeded when asked, else from fresh entropy."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    params: SamplingParams,
    generator: torch.Generator,
) -> list[int]:
    """The plain loop: recompute the last `block_size` tokens each step, one sequence."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    vocab = model.config.vocab_size
    seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
    seen[0, ids[0]] = True
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits, _ = model(ids[:, -model.block_size :])
        next_id = sample_next(logits[:, -1, :], [params], [generator], seen)
        seen[0, next_id] = True
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        out.append(int(next_id))
    return out
