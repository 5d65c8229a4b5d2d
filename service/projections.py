"""The playground's pictures of a model: its bigram table and a 2-D map of its token vectors.

Both are served a window at a time, so that no response grows with the vocabulary: a bigram
table of at most `MAX_TABLE_SIDE` x `MAX_TABLE_SIDE` cells, at most `MAX_EMBEDDING_POINTS`
points. These run in the inspector's worker threads (under `torch.inference_mode()`), like the
rest of the model work (service.inspection).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import msgspec
import torch

from service.exceptions import InvalidRequestError
from service.schemas import (
    DEFAULT_EMBEDDING_POINTS,
    MAX_TABLE_SIDE,
    BigramTable,
    EmbeddingPoint,
    EmbeddingProjection,
    TableAxis,
    TokenOrder,
)

if TYPE_CHECKING:
    from service.loaded_model import LoadedModel

RankedBy = Literal["token_id", "training_counts", "stationary_probability"]
# Below this many rows or columns the exact SVD is quick; above, its cost grows as the cube.
EXACT_PCA_MAX_SIDE = 512


def token_texts(model: LoadedModel, ids: range | list[int]) -> list[str]:
    return [model.tokenizer.token_text(i) for i in ids]


def check_start(model: LoadedModel, param: str, value: int | None, what: str) -> None:
    """A window's first position must be one of the model's tokens: else a 400 saying so."""
    if value is not None and value >= model.vocab_size:
        raise InvalidRequestError(
            f"`{param}` is {value}, but model {model.id!r} has {model.vocab_size} tokens, "
            f"{what} 0 to {model.vocab_size - 1}; ask for a {param} below {model.vocab_size}",
            param=param,
        )


# -- the bigram table ---------------------------------------------------------------------


@dataclass(frozen=True)
class TableWindow:
    """Which part of the table to serve: `rows` x `cols` tokens from ranks `row_start` and
    `col_start` of `order` (by default token ids when the whole table fits, else frequency),
    or the window holding token `focus` on both sides."""

    order: TokenOrder | None = None
    row_start: int | None = None
    col_start: int | None = None
    rows: int = MAX_TABLE_SIDE
    cols: int = MAX_TABLE_SIDE
    focus: int | None = None

    def check(self, model: LoadedModel) -> None:
        if self.focus is not None and (self.row_start is not None or self.col_start is not None):
            raise InvalidRequestError(
                "give either `focus` (the window holding one token) or `row_start`/`col_start`"
                ", not both",
                param="focus",
            )
        check_start(model, "row_start", self.row_start, "ranked")
        check_start(model, "col_start", self.col_start, "ranked")
        check_start(model, "focus", self.focus, "with ids")


@dataclass(frozen=True)
class Ranking:
    """The tokens in rank order (`ids[rank]`), and each token's rank (`ranks[id]`)."""

    ids: list[int]
    ranks: list[int]
    ranked_by: RankedBy


V = TypeVar("V")


class PerModel(Generic[V]):
    """Values computed once per model, on first use, and kept as long as its weights live:
    a reloaded checkpoint is a new module, so it gets its own."""

    def __init__(self, compute: Callable[[LoadedModel], V]):
        self.compute = compute
        self.values: weakref.WeakKeyDictionary[torch.nn.Module, V] = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()

    def __call__(self, model: LoadedModel) -> V:
        with self.lock:
            known = self.values.get(model.model)
        if known is None:
            known = self.compute(model)
            with self.lock:
                self.values[model.model] = known
        return known


def stationary_distribution(
    logits: torch.Tensor, iterations: int = 1000, tolerance: float = 1e-7
) -> torch.Tensor:
    """The distribution pi = pi P of the chain whose rows P are softmax(logits), by power
    iteration: how often the model, left to generate, emits each token. Every P(j | i) is
    positive, so the chain has exactly one, and the iteration converges to it."""
    table = torch.softmax(logits.float(), dim=-1)
    pi = torch.full((table.shape[0],), 1.0 / table.shape[0], device=table.device)
    for _ in range(iterations):
        following = pi @ table
        following = following / following.sum()
        converged = float((following - pi).abs().sum()) < tolerance
        pi = following
        if converged:
            break
    return pi


@PerModel
def frequency_ranking(model: LoadedModel) -> Ranking:
    """Most frequent token first: by its count as the current token in the training split
    when the manifest has the counts, else by the model's stationary distribution."""
    counts = model.checkpoint.manifest.get("bigram_counts")
    ranked_by: RankedBy
    if counts is not None:
        weights = torch.tensor([sum(row) for row in counts], dtype=torch.float64)
        ranked_by = "training_counts"
    else:
        weights = stationary_distribution(model.model.token_vectors()).cpu()
        ranked_by = "stationary_probability"
    ids = torch.sort(weights, descending=True, stable=True).indices
    ranks = torch.empty_like(ids)
    ranks[ids] = torch.arange(len(ids))
    return Ranking(ids=ids.tolist(), ranks=ranks.tolist(), ranked_by=ranked_by)


def token_ranking(model: LoadedModel, order: TokenOrder) -> Ranking:
    if order == "frequency":
        return frequency_ranking(model)
    ids = list(range(model.vocab_size))
    return Ranking(ids=ids, ranks=ids, ranked_by="token_id")


def next_start(start: int, length: int, total: int) -> int | None:
    return start + length if start + length < total else None


def table_axis(model: LoadedModel, ranking: Ranking, start: int, count: int) -> TableAxis:
    ids = ranking.ids[start : start + count]
    return TableAxis(
        start=start,
        ids=ids,
        tokens=token_texts(model, ids),
        next=next_start(start, len(ids), model.vocab_size),
    )


def bigram_table(model: LoadedModel, window: TableWindow) -> BigramTable:
    """Row r: the learned P(next = j | current = rows.ids[r]) for the window's columns j,
    and the training split's, if recorded.

    The softmax runs in float64 over the whole vocabulary, as `/v1/next-token` does, so
    that a row's cells equal that endpoint's probabilities after a context ending in its
    token.
    """
    vocab = model.vocab_size
    order = window.order or ("id" if vocab <= MAX_TABLE_SIDE else "frequency")
    ranking = token_ranking(model, order)
    row_start, col_start = window.row_start or 0, window.col_start or 0
    if window.focus is not None:  # the window of each side's grid that holds it
        rank = ranking.ranks[window.focus]
        row_start, col_start = rank - rank % window.rows, rank - rank % window.cols
    rows = table_axis(model, ranking, row_start, window.rows)
    cols = table_axis(model, ranking, col_start, window.cols)
    vectors = model.model.token_vectors()
    row_ids = torch.tensor(rows.ids, device=vectors.device)
    col_ids = torch.tensor(cols.ids, device=vectors.device)
    probs = torch.softmax(vectors[row_ids].double(), dim=-1)[:, col_ids]
    empirical = None
    if model.empirical is not None:
        empirical = model.empirical[row_ids][:, col_ids].double().tolist()
    return BigramTable(
        model=model.id,
        vocab_size=vocab,
        order=order,
        ranked_by=ranking.ranked_by,
        rows=rows,
        cols=cols,
        probs=probs.tolist(),
        empirical=empirical,
    )


# -- the embedding projection -------------------------------------------------------------


def leading_singular_vectors(
    matrix: torch.Tensor, count: int, oversample: int = 10, iterations: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest singular values of `matrix` and their right singular vectors (as rows),
    by seeded subspace iteration: a few products with the matrix instead of a whole SVD."""
    width = min(count + oversample, *matrix.shape)
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    basis = torch.randn(
        matrix.shape[1], width, generator=generator, dtype=matrix.dtype, device=matrix.device
    )
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(matrix.T @ (matrix @ basis))
    _, singular, small_axes_t = torch.linalg.svd(matrix @ basis, full_matrices=False)
    return singular, small_axes_t @ basis.T


def principal_components(vectors: torch.Tensor, count: int = 2) -> tuple[torch.Tensor, list[float]]:
    """The rows of `vectors` on their first `count` principal axes, and the share of the
    total variance each axis explains.

    Each axis' sign is fixed (its largest loading is positive, as scikit-learn's `svd_flip`
    does), so the same vectors always give the same picture. A matrix large on both sides
    (a bigram's V x V table) gets its leading axes by subspace iteration, not a full SVD.
    """
    centred = vectors.double() - vectors.double().mean(dim=0, keepdim=True)
    if min(centred.shape) <= EXACT_PCA_MAX_SIDE:
        _, singular, axes_t = torch.linalg.svd(centred, full_matrices=False)
    else:
        singular, axes_t = leading_singular_vectors(centred, count)
    axes = axes_t[:count]  # (count, D)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    total = float(centred.square().sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in singular[:count].square()]
    explained += [0.0] * (count - len(explained))
    coords = centred @ axes.T
    if coords.shape[1] < count:  # fewer dimensions than axes asked for
        coords = torch.nn.functional.pad(coords, (0, count - coords.shape[1]))
    return coords, explained


@PerModel
def embedding_projection(model: LoadedModel) -> EmbeddingProjection:
    """Every token vector (GPT: embedding rows; bigram: table rows) on 2 PCA axes fitted on
    all of them; `projection_page` serves a bounded run of it."""
    coords, explained = principal_components(model.model.token_vectors().detach())
    ids = range(model.vocab_size)
    points = [
        EmbeddingPoint(token=token, id=i, x=x, y=y)
        for i, token, (x, y) in zip(ids, token_texts(model, ids), coords.tolist(), strict=True)
    ]
    return EmbeddingProjection(
        model=model.id,
        method="pca",
        explained_variance=explained,
        total=len(points),
        offset=0,
        next_offset=None,
        points=points,
    )


def projection_page(
    projection: EmbeddingProjection, offset: int = 0, limit: int = DEFAULT_EMBEDDING_POINTS
) -> EmbeddingProjection:
    """The points of token ids `offset` to `offset + limit - 1` (fewer at the end)."""
    points = projection.points[offset : offset + limit]
    return msgspec.structs.replace(
        projection,
        offset=offset,
        next_offset=next_start(offset, len(points), projection.total),
        points=points,
    )
