"""Looking inside a model: next-token distributions, token-vector neighbours, prompt scores,
a GPT's forward pass (attention weights, the logit lens) and the playground's pictures. The
callers pass domain values (a LoadedModel, token ids), never HTTP structs.

Model work runs in worker threads (at most `Settings.worker_threads` at once) under
`torch.inference_mode()`, so the event loop keeps serving while a model computes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import torch
import torch.nn.functional as F

from models.gpt import GPT
from models.tokenizer import UnknownCharacterError
from service import projections
from service.engine import LOGPROB_FLOOR
from service.exceptions import InvalidRequestError
from service.loaded_model import LoadedModel
from service.schemas import (
    MAX_ATTENTION_WEIGHTS,
    MAX_LENS_PREDICTIONS,
    AttentionLayer,
    AttentionResponse,
    BigramTable,
    EmbeddingProjection,
    LensLayer,
    LogitLensResponse,
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
        self,
        model: LoadedModel,
        positive: list[int],
        negative: list[int],
        metric: Metric,
        k: int,
        excluded: list[int],
    ) -> list[Neighbour]:
        """The `k` tokens nearest one token (`positive` alone) or an analogy's query vector,
        other than the `excluded` ones."""
        return await self.compute(nearest_tokens, model, positive, negative, metric, k, excluded)

    async def attention(self, model: LoadedModel, ids: list[int]) -> AttentionResponse:
        """A GPT's attention weights, every layer and head, over the last tokens of `ids`."""
        return await self.compute(attention_weights, model, ids)

    async def logit_lens(self, model: LoadedModel, ids: list[int], top_k: int) -> LogitLensResponse:
        """A GPT's `top_k` next tokens read off its residual stream at every depth and
        position of the last tokens of `ids`."""
        return await self.compute(logit_lens, model, ids, top_k)

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


# Metrics whose score is a distance: nearest first, smallest score first.
DISTANCES = ("euclidean", "jensen_shannon")


def nearest_tokens(
    model: LoadedModel,
    positive: list[int],
    negative: list[int],
    metric: str,
    k: int,
    excluded: list[int],
) -> list[Neighbour]:
    """Rank every token but the `excluded` ones against the query."""
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
    elif metric == "jensen_shannon":
        scores = -jensen_shannon_distances(model.model.token_vectors(), positive[0])
    else:
        vectors = model.model.token_vectors()
        target = vectors[positive[0]]
        # Euclidean distances are negated so that, as for the others, larger is nearer.
        scores = vectors @ target if metric == "dot" else -(vectors - target).norm(dim=1)
    scores = scores.float().clone()
    scores[excluded] = float("-inf")
    count = min(k, model.vocab_size - len(excluded))
    top = torch.topk(scores, count)
    sign = -1.0 if metric in DISTANCES else 1.0
    return [
        Neighbour(token=model.tokenizer.token_text(i), id=i, score=sign * score)
        for score, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def jensen_shannon_distances(
    logits: torch.Tensor, row: int, rows_at_once: int = 256
) -> torch.Tensor:
    """(V,) float64: the Jensen-Shannon distance, in bits, between the next-token
    distribution softmax(logits[row]) and each row's: sqrt(JSD), where
    JSD(p, q) = H(m) - (H(p) + H(q)) / 2 and m = (p + q) / 2. 0 for the same distribution,
    1 for disjoint ones; unlike the divergence itself, a metric.

    Unlike the cosine of raw logit rows it weighs each next token by how likely it is, so
    the many tokens a row barely predicts, whose logits say little, count for little. The
    rows are compared a few at a time: all at once would hold several V x V tensors."""
    p = logits[row].double().softmax(dim=-1)  # (V,)
    entropy_p = torch.special.entr(p).sum()
    divergences = []
    for start in range(0, logits.shape[0], rows_at_once):
        q = logits[start : start + rows_at_once].double().softmax(dim=-1)  # (rows, V)
        entropy_m = torch.special.entr((p + q) / 2).sum(dim=-1)
        entropy_q = torch.special.entr(q).sum(dim=-1)
        divergences.append(entropy_m - (entropy_p + entropy_q) / 2)
    # Rounding can take a divergence of 0 a hair below it.
    return (torch.cat(divergences).clamp(min=0) / math.log(2)).sqrt()


def query_spellings(model: LoadedModel, ids: list[int]) -> list[int]:
    """`ids` and, for each, the token of the same text with or without a leading space,
    where the vocabulary has one (a subword vocabulary's `man` and ` man`): the tokens a
    neighbours query leaves out of its results. Each id once, in the order found."""
    found = dict.fromkeys(ids)
    for i in ids:
        text = model.tokenizer.token_text(i)
        other = text[1:] if text.startswith(" ") else " " + text
        try:
            other_ids = model.tokenizer.encode(other)
        except UnknownCharacterError:  # a vocabulary without a space
            continue
        if len(other_ids) == 1 and model.tokenizer.token_text(other_ids[0]) == other:
            found.setdefault(other_ids[0])
    return list(found)


# -- inside one forward pass ------------------------------------------------------------

# Why a bigram has neither: what its 400 says.
NO_ATTENTION = "which has no attention: each of its predictions reads the current token only"
NO_LAYERS = (
    "which has no layers to read predictions off, only its table row for the current token "
    "(POST /v1/next-token shows it)"
)


def traced_gpt(model: LoadedModel, why_not: str) -> GPT:
    """The model as a GPT, whose forward pass can be traced; a bigram is a 400 saying
    `why_not`."""
    if not isinstance(model.model, GPT):
        raise InvalidRequestError(
            f"model {model.id!r} is a {model.kind}, {why_not}; ask a GPT (GET /v1/models "
            "lists each model's kind)",
            param="model",
        )
    return model.model


def last_tokens(ids: list[int], window: int) -> tuple[list[int], int]:
    """The last `window` of `ids`, and how many came before them."""
    skipped = max(0, len(ids) - window)
    return ids[skipped:], skipped


def attention_weights(model: LoadedModel, ids: list[int]) -> AttentionResponse:
    """Every layer's and head's weights over the last block_size tokens of `ids` (fewer
    where layers x heads x tokens^2 would pass MAX_ATTENTION_WEIGHTS)."""
    gpt = traced_gpt(model, NO_ATTENTION)
    heads = gpt.config.n_layer * gpt.config.n_head
    window, skipped = last_tokens(
        ids, min(gpt.block_size, math.isqrt(MAX_ATTENTION_WEIGHTS // heads))
    )
    trace = gpt.trace(torch.tensor([window], dtype=torch.long, device=model.device))
    weights = trace.attention[:, 0].float()  # (n_layer, nh, T, T)
    return AttentionResponse(
        model=model.id,
        tokens=projections.token_texts(model, window),
        ids=window,
        skipped_tokens=skipped,
        n_layer=gpt.config.n_layer,
        n_head=gpt.config.n_head,
        layers=[
            AttentionLayer(layer=layer, heads=layer_weights)
            for layer, layer_weights in enumerate(weights.tolist())
        ],
    )


def logit_lens(model: LoadedModel, ids: list[int], top_k: int) -> LogitLensResponse:
    """At every depth (the embeddings, then after each block) and position of the last
    block_size tokens of `ids` (fewer where (layers + 1) x tokens x top_k would pass
    MAX_LENS_PREDICTIONS), the `top_k` next tokens its residual stream predicts through the
    final LayerNorm and the head.

    The probabilities are computed as `next_token_distribution` computes them (a float64
    softmax, ties in token-id order), so that the output layer's last position is that
    endpoint's distribution."""
    gpt = traced_gpt(model, NO_LAYERS)
    depths = gpt.config.n_layer + 1
    window, skipped = last_tokens(
        ids, min(gpt.block_size, MAX_LENS_PREDICTIONS // (depths * top_k))
    )
    trace = gpt.trace(torch.tensor([window], dtype=torch.long, device=model.device))
    # One depth at a time, each (1, T, C) as `forward` reads its last one out: the same
    # shapes take the same kernels, so the output layer's logits are forward's to the bit.
    logits = torch.cat([gpt.read_out(states) for states in trace.residuals])  # (depths, T, V)
    logprobs = F.log_softmax(logits.double(), dim=-1)
    order = torch.sort(logprobs, dim=-1, descending=True, stable=True)  # (depths, T, V)
    top_logprobs = order.values[..., :top_k]
    tops = zip(
        order.indices[..., :top_k].tolist(),
        top_logprobs.exp().tolist(),
        top_logprobs.tolist(),
        strict=True,
    )
    text = model.tokenizer.token_text
    layers = [
        LensLayer(
            layer=layer,
            predictions=[
                [
                    TokenProbability(token=text(i), id=i, prob=p, logprob=logprob)
                    for i, p, logprob in zip(*position, strict=True)
                ]
                for position in zip(*layer_tops, strict=True)
            ],
        )
        for layer, layer_tops in enumerate(tops)
    ]
    return LogitLensResponse(
        model=model.id,
        tokens=projections.token_texts(model, window),
        ids=window,
        skipped_tokens=skipped,
        layers=layers,
    )


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
