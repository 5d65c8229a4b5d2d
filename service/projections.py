"""The playground's pictures of a model: its bigram table and a 2-D map of its token vectors.

These run in the registry's worker threads (under `torch.inference_mode()`), like the rest of
the model work; handlers reach them through `ModelRegistry.bigram_table` and
`ModelRegistry.embedding_projection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from service.schemas import BigramTable, EmbeddingPoint, EmbeddingProjection

if TYPE_CHECKING:
    from service.registry import LoadedModel


def token_texts(model: LoadedModel) -> list[str]:
    return [model.tokenizer.token_text(i) for i in range(model.vocab_size)]


def bigram_table(model: LoadedModel) -> BigramTable:
    """Row i: the learned P(next = j | current = i), and the training split's, if recorded.

    The softmax runs in float64, as `/v1/next-token` does, so that row i equals that
    endpoint's distribution after a context ending in token i.
    """
    logits = model.model.token_vectors().double()
    probs = torch.softmax(logits, dim=-1)
    empirical = None if model.empirical is None else model.empirical.double().tolist()
    return BigramTable(
        model=model.id, tokens=token_texts(model), probs=probs.tolist(), empirical=empirical
    )


def principal_components(vectors: torch.Tensor, count: int = 2) -> tuple[torch.Tensor, list[float]]:
    """The rows of `vectors` on their first `count` principal axes, and the share of the
    total variance each axis explains.

    Each axis' sign is fixed (its largest loading is positive, as scikit-learn's `svd_flip`
    does), so the same vectors always give the same picture.
    """
    centred = vectors.double() - vectors.double().mean(dim=0, keepdim=True)
    _, singular, axes_t = torch.linalg.svd(centred, full_matrices=False)
    axes = axes_t[:count]  # (count, D)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, 1.0, signs)
    variance = singular.square()
    total = float(variance.sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in variance[:count]]
    explained += [0.0] * (count - len(explained))
    coords = centred @ axes.T
    if coords.shape[1] < count:  # fewer dimensions than axes asked for
        coords = torch.nn.functional.pad(coords, (0, count - coords.shape[1]))
    return coords, explained


def embedding_projection(model: LoadedModel) -> EmbeddingProjection:
    """Token vectors (GPT: embedding rows; bigram: table rows) projected onto 2 PCA axes."""
    coords, explained = principal_components(model.model.token_vectors().detach())
    points = [
        EmbeddingPoint(token=token, id=i, x=x, y=y)
        for i, (token, (x, y)) in enumerate(zip(token_texts(model), coords.tolist(), strict=True))
    ]
    return EmbeddingProjection(
        model=model.id, method="pca", explained_variance=explained, points=points
    )
