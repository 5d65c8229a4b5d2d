"""Batched next-token sampling with per-row parameters and per-row random generators.

Every row draws exactly one uniform number per step from its own generator, so a request's
output depends only on its own seed and parameters, never on what else shares the batch.
The sampling functions take those uniforms as a tensor, drawn by the caller: from the
generators step by step (`uniforms`), or ahead of time in blocks, which gives the same numbers
(a generator's stream does not depend on how many it is asked for at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from models.bigram import BigramLanguageModel
    from models.gpt import GPT


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # OpenAI's: subtracted from a token's logit once it has been generated (presence), and
    # once per time it has been generated (frequency)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)


def penalize_repetition(
    logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """CTRL-style penalty on tokens already in the sequence: shrink positive logits, grow
    negative ones. `seen` is a (B, V) bool mask, `penalty` a (B,) tensor (1 = off)."""
    factor = torch.where(seen, penalty[:, None], torch.ones_like(logits))
    return torch.where(logits > 0, logits / factor, logits * factor)


# A smaller temperature than this (other than 0) is taken as this: dividing float32 logits by
# it could overflow them to inf and the softmax to NaN, or round it to 0 in float32. Sampling
# at this temperature is already greedy for any logits a model produces.
MIN_TEMPERATURE = 1e-6


def penalize_counts(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI's penalties: logit[j] - counts[j] * frequency - (counts[j] > 0) * presence, with
    `counts` (B, V) the times each token was generated so far, `presence`, `frequency` (B,)."""
    return logits - counts * frequency[:, None] - (counts > 0) * presence[:, None]


def scale_by_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits (B, V) / temperature (B,) as float32; rows with temperature 0 (greedy) are left
    as they are, since their probabilities are not used."""
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return logits.float() / t[:, None]


def removed_by_filters(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """(B, V) bool: the tokens that top-k, then top-p, then min-p remove from each row.

    logits (B, V) already scaled by temperature; top_p, min_p (B,) floats; top_k (B,) ints with
    0 meaning off. A row whose settings are all off loses nothing, exactly, so a batch may skip
    this function when none of its rows filters without changing any row's result.
    """
    B, V = logits.shape
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    rank = torch.arange(V, device=logits.device).expand(B, V)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V))
    remove = rank >= k[:, None]
    sorted_probs = F.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    # top-p: drop a token once the tokens before it already cover top_p of the mass (rounding
    # can push that mass a hair past 1, so top_p = 1 is off explicitly)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    remove |= (mass_before > top_p[:, None]) & (top_p[:, None] < 1)
    # min-p: drop tokens less likely than min_p times the most likely one
    remove |= sorted_probs < min_p[:, None] * sorted_probs[:, :1]
    remove[:, 0] = False  # the most likely token always survives
    return torch.zeros_like(remove).scatter_(-1, order, remove)


def uniforms(generators: list[torch.Generator]) -> torch.Tensor:
    """The next uniform number of each generator, (B,) float64 on the CPU."""
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling with the uniforms `u` (B,) float64, one a row. Returns (B,) ids.

    Rows need not sum to 1: the uniform is scaled by each row's total."""
    cdf = probs.double().cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1)
    return ids.clamp_(max=probs.size(-1) - 1)


@dataclass(frozen=True)
class BatchParams:
    """The SamplingParams of a batch as (B,) tensors, plus which steps any row needs, so that
    a batch skips the steps none of its rows needs. Skipping changes no row's result, bit for
    bit (x / 1 is x, a filter that is off removes nothing), which keeps sampling
    batch-invariant. Build once per batch composition, not once per step."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    repetition_penalty: torch.Tensor
    presence_penalty: torch.Tensor
    frequency_penalty: torch.Tensor
    logit_bias: torch.Tensor | None  # (B, V) added to the logits; None when no row has one
    scaling: bool  # some temperature is neither 0 nor 1
    greedy: bool  # some temperature is 0
    all_greedy: bool  # every temperature is 0: the argmax alone decides
    filtering: bool  # some row uses top-k, top-p or min-p
    penalizing: bool  # some row has a repetition penalty
    counting: bool  # some row has a presence or frequency penalty

    @classmethod
    def stack(
        cls, params: list[SamplingParams], device: torch.device | str, vocab_size: int
    ) -> BatchParams:
        def column(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        logit_bias = None
        if any(p.logit_bias for p in params):
            logit_bias = torch.zeros(len(params), vocab_size, device=device)
            for row, p in enumerate(params):
                for token_id, bias in p.logit_bias:
                    logit_bias[row, token_id] = bias

        temperatures = [
            max(p.temperature, MIN_TEMPERATURE) if p.temperature else 0.0 for p in params
        ]
        return cls(
            temperature=column(temperatures, torch.float32),
            top_k=column([p.top_k or 0 for p in params], torch.long),
            top_p=column([p.top_p for p in params], torch.float32),
            min_p=column([p.min_p for p in params], torch.float32),
            repetition_penalty=column([p.repetition_penalty for p in params], torch.float32),
            presence_penalty=column([p.presence_penalty for p in params], torch.float32),
            frequency_penalty=column([p.frequency_penalty for p in params], torch.float32),
            logit_bias=logit_bias,
            scaling=any(p.temperature not in (0, 1) for p in params),
            greedy=any(p.temperature == 0 for p in params),
            all_greedy=all(p.temperature == 0 for p in params),
            filtering=any(p.top_k or p.top_p < 1 or p.min_p > 0 for p in params),
            penalizing=any(p.repetition_penalty != 1 for p in params),
            counting=any(p.presence_penalty or p.frequency_penalty for p in params),
        )


def sample_batch(
    logits: torch.Tensor,
    params: BatchParams,
    u: torch.Tensor | None,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the next token of every row of `logits` (B, V) with the uniforms `u` (B,)
    float64 on its device (None only when every row is greedy); returns (B,) ids.

    Every step of every row costs exactly one uniform, greedy rows included, and every
    operation works row by row: a row's choice never depends on the other rows.
    `seen` (B, V) bool marks the tokens the repetition penalty applies to, `counts` (B, V)
    the times each token was generated, for the presence and frequency penalties. The logits
    change in this order: repetition penalty, presence and frequency, logit bias, then
    temperature and the filters."""
    logits = logits.float()
    if params.penalizing and seen is not None:
        logits = penalize_repetition(logits, seen, params.repetition_penalty)
    if params.counting and counts is not None:
        logits = penalize_counts(logits, counts, params.presence_penalty, params.frequency_penalty)
    if params.logit_bias is not None:
        logits = logits + params.logit_bias
    if params.all_greedy:  # the draws would be discarded: the same ids, without them
        return logits.argmax(dim=-1)
    if u is None:
        raise ValueError("sampling at a temperature above 0 needs the rows' uniforms")
    scaled = scale_by_temperature(logits, params.temperature) if params.scaling else logits
    # Unnormalised is fine: `draw` scales its uniform by each row's total.
    probs = F.softmax(scaled, dim=-1)  # (B, V)
    if params.filtering:
        removed = removed_by_filters(scaled, params.top_k, params.top_p, params.min_p)
        probs = probs.masked_fill(removed, 0.0)
    sampled = draw(probs, u)
    if not params.greedy:
        return sampled
    return torch.where(params.temperature == 0, logits.argmax(dim=-1), sampled)


def sample_next(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the next token of every row of `logits` (B, V) under that row's parameters."""
    batch = BatchParams.stack(params, logits.device, logits.size(-1))
    return sample_batch(logits, batch, uniforms(generators).to(logits.device), seen, counts)


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
    model: GPT | BigramLanguageModel,
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
