"""Looking inside a model: next-token distributions, token-vector neighbours, prompt scores
and the playground's pictures. The callers pass domain values (a LoadedModel, token ids),
never HTTP structs.

Model work runs in worker threads (at most `Settings.worker_threads` at once) under
`torch.inference_mode()`, so the event loop keeps serving while a model computes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import torch
import torch.nn.functional as F

from service import projections
from service.engine import LOGPROB_FLOOR
from service.exceptions import InvalidRequestError
from service.loaded_model import LoadedModel
from service.schemas import (
    BigramTable,
    EmbeddingProjection,
    Metric,
    Neighbour,
    TokenProbability,
)
from service.settings import Settings

T = TypeVar("T")


def run_in_inference_mode(fn: Callable[..., T], *args: Any) -> T:
    with torch.inference_mode():
        return fn(*args)


class Inspector:
    """Runs the inspection work of the loaded models in worker threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limiter: anyio.CapacityLimiter | None = None  # made on first use, in the loop

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work in a worker thread, at most `worker_threads` at a time."""
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(self.settings.worker_threads)
        return await anyio.to_thread.run_sync(
            functools.partial(run_in_inference_mode, fn, *args), limiter=self.limiter
        )

    async def score_prompt(
        self, model: LoadedModel, ids: list[int], top_logprobs: int
    ) -> list[PromptTokenScore]:
        """Each token of `ids` with the model's log-probability of it given the tokens before
        (None for the first, which has no context), and the `top_logprobs` most likely
        alternatives there; one forward pass per context window."""
        return await self.compute(prompt_token_scores, model, ids, top_logprobs)

    async def next_token(
        self, model: LoadedModel, context_ids: list[int], temperature: float, top_k: int | None
    ) -> tuple[list[TokenProbability], float]:
        """The distribution over the token after `context_ids`, most likely first (the `top_k`
        most likely, if given), and its entropy in nats."""
        return await self.compute(next_token_distribution, model, context_ids, temperature, top_k)

    async def neighbours(
        self, model: LoadedModel, positive: list[int], negative: list[int], metric: Metric, k: int
    ) -> list[Neighbour]:
        """The `k` tokens nearest one token (`positive` alone) or an analogy's query vector."""
        return await self.compute(nearest_tokens, model, positive, negative, metric, k)

    async def text_embeddings(self, model: LoadedModel, texts: list[list[int]]) -> torch.Tensor:
        """One vector per text (len(texts), D): see `text_embedding`."""
        return await self.compute(text_embeddings, model, texts)

    async def bigram_table(
        self, model: LoadedModel, window: projections.TableWindow
    ) -> BigramTable:
        """A window of a bigram model's table of P(next | current), learned and empirical."""
        window.check(model)
        return await self.compute(projections.bigram_table, model, window)

    async def embedding_projection(
        self, model: LoadedModel, offset: int, limit: int
    ) -> EmbeddingProjection:
        """At most `limit` points, from token id `offset` on, of the 2-D PCA projection
        fitted on all of a model's token vectors (computed once per model)."""
        projections.check_start(model, "offset", offset, "with ids")
        projection = await self.compute(projections.embedding_projection, model)
        return projections.projection_page(projection, offset, limit)


@dataclass(frozen=True)
class PromptTokenScore:
    token_id: int
    text: str
    logprob: float | None  # None for the first token: nothing comes before it
    top_logprobs: list[tuple[str, float]]  # most likely first; empty for the first token


def prompt_logits(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1, V) logits: row t predicts ids[t + 1]. Prompts longer than the GPT's
    context are scored in windows overlapping by half, each position once, with at least
    half a window of context."""
    if model.kind == "bigram":
        return model.model.token_vectors()[ids[:-1]]
    block = model.model.block_size
    rows: list[torch.Tensor] = []
    start, scored = 0, 0  # scored: positions t (predicting ids[t + 1]) done so far
    while scored < len(ids) - 1:
        window = ids[start : start + block]
        logits, _ = model.model(torch.tensor([window], dtype=torch.long, device=model.device))
        end = start + len(window) - 1  # the window predicts positions start .. end - 1
        rows.append(logits[0, scored - start : end - start])
        scored = end
        start = max(0, scored - block // 2)
    return torch.cat(rows)


def prompt_token_scores(
    model: LoadedModel, ids: list[int], top_logprobs: int
) -> list[PromptTokenScore]:
    if not ids:
        return []
    text = model.tokenizer.token_text
    scores = [PromptTokenScore(ids[0], text(ids[0]), None, [])]
    if len(ids) == 1:
        return scores
    logprobs = prompt_logits(model, ids).float().log_softmax(dim=-1)
    logprobs = logprobs.nan_to_num(LOGPROB_FLOOR, 0, LOGPROB_FLOOR).clamp_(min=LOGPROB_FLOOR)
    chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0]
    tops_values: list[list[float]] = [[] for _ in ids[1:]]
    tops_ids: list[list[int]] = [[] for _ in ids[1:]]
    if top_logprobs:
        top = logprobs.topk(min(top_logprobs, model.vocab_size), dim=-1)
        tops_values, tops_ids = top.values.tolist(), top.indices.tolist()
    for token_id, logprob, values, alternatives in zip(
        ids[1:], chosen.tolist(), tops_values, tops_ids, strict=True
    ):
        top_list = [(text(i), v) for i, v in zip(alternatives, values, strict=True)]
        scores.append(PromptTokenScore(token_id, text(token_id), logprob, top_list))
    return scores


def next_token_logits(model: LoadedModel, context_ids: list[int]) -> torch.Tensor:
    if model.kind == "bigram":
        return model.model.token_vectors()[context_ids[-1]]
    window = context_ids[-model.model.block_size :]
    logits, _ = model.model(torch.tensor([window], dtype=torch.long, device=model.device))
    return logits[0, -1]


def next_token_distribution(
    model: LoadedModel, context_ids: list[int], temperature: float, top_k: int | None
) -> tuple[list[TokenProbability], float]:
    # float64 so the listed probabilities sum to 1 well within 1e-5 even over many tokens.
    logprobs = F.log_softmax(next_token_logits(model, context_ids).double() / temperature, dim=-1)
    probs = logprobs.exp()
    entropy = float(torch.special.entr(probs).sum())
    order = torch.sort(probs, descending=True, stable=True).indices[:top_k].tolist()
    probs_list, logprobs_list = probs.tolist(), logprobs.tolist()
    empirical = None
    if model.empirical is not None:
        empirical = model.empirical[context_ids[-1]].tolist()
    distribution = [
        TokenProbability(
            token=model.tokenizer.token_text(i),
            id=i,
            prob=probs_list[i],
            logprob=logprobs_list[i],
            empirical_prob=None if empirical is None else empirical[i],
        )
        for i in order
    ]
    return distribution, entropy


def nearest_tokens(
    model: LoadedModel, positive: list[int], negative: list[int], metric: str, k: int
) -> list[Neighbour]:
    """Rank every token against the query; the query's own tokens are never listed."""
    unit = model.unit_vectors
    if metric == "cosine":
        # gensim's most_similar: the mean of +unit(positive) and -unit(negative), normalised;
        # a single token is its one-element case.
        query = torch.cat([unit[positive], -unit[negative]]).mean(dim=0)
        if not query.any():
            raise InvalidRequestError(
                "the positive and negative tokens cancel out: their query vector is zero",
                param="negative",
            )
        scores = unit @ F.normalize(query, dim=0)
    else:
        vectors = model.model.token_vectors()
        target = vectors[positive[0]]
        # Euclidean distances are negated so that, as for the others, larger is nearer.
        scores = vectors @ target if metric == "dot" else -(vectors - target).norm(dim=1)
    scores = scores.float().clone()
    scores[positive + negative] = float("-inf")
    count = min(k, model.vocab_size - len(set(positive + negative)))
    top = torch.topk(scores, count)
    sign = -1.0 if metric == "euclidean" else 1.0
    return [
        Neighbour(token=model.tokenizer.token_text(i), id=i, score=sign * score)
        for score, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def text_embeddings(model: LoadedModel, texts: list[list[int]]) -> torch.Tensor:
    return torch.stack([text_embedding(model, ids) for ids in texts])


def text_embedding(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """A text's vector: the mean over its tokens of what the model reads at each position to
    predict the next one (the GPT: its final normalised hidden states, each token seen with
    the context before it, in consecutive windows of block_size; the bigram: the tokens'
    table rows). The mean of the states the head reads is the text as the model sees it, and
    it needs no training of its own. (D,) float32."""
    block = model.model.block_size
    states = [
        model.model.hidden_states(
            torch.tensor([ids[start : start + block]], dtype=torch.long, device=model.device)
        )[0]
        for start in range(0, len(ids), block)
    ]
    return torch.cat(states).float().mean(dim=0)
