"""Bigram language model: one V x V table whose row i holds the logits of the token after i."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

BigramInit = Literal["zeros", "normal", "empirical"]
# The counts go into the manifest as JSON, V^2 numbers: fine for characters, but for a 2048-token
# BPE vocabulary they would make every checkpoint write tens of megabytes of text.
MAX_VOCAB_FOR_STORED_COUNTS = 512


@dataclass
class BigramConfig:
    vocab_size: int
    init: BigramInit = "zeros"


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts[i, j] = how often token j follows token i in `ids`."""
    pairs = ids[:-1].long() * vocab_size + ids[1:].long()
    return torch.bincount(pairs, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def empirical_table(counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Laplace-smoothed P(next = j | current = i) from bigram counts."""
    smoothed = counts.double() + smoothing
    return (smoothed / smoothed.sum(dim=1, keepdim=True)).float()


def table_cross_entropy(table: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean -log P(next | current) of the pairs in `ids` under a probability table."""
    return -table[ids[:-1], ids[1:]].double().log().mean().item()


class BigramTrainingSettings(Protocol):
    """The training settings the bigram reads (models.config.TrainConfig holds them)."""

    init: BigramInit
    laplace: float


class BigramLanguageModel(nn.Module):
    def __init__(self, config: BigramConfig):
        super().__init__()
        self.config = config
        # Row i is a full set of next-token logits: the table *is* the model.
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    @property
    def block_size(self) -> int:
        return 1

    def init_weights(self, train_ids: torch.Tensor | None = None) -> None:
        """Apply `config.init`; `empirical` needs the training split to count bigrams."""
        weight = self.token_embedding_table.weight
        with torch.no_grad():
            if self.config.init == "zeros":
                weight.zero_()  # every row uniform: loss at init is exactly ln V
            elif self.config.init == "normal":
                weight.normal_(mean=0.0, std=0.01)
            elif self.config.init == "empirical":
                if train_ids is None:
                    raise ValueError("the empirical init needs the training split")
                counts = bigram_counts(train_ids, self.config.vocab_size)
                weight.copy_(empirical_table(counts).log())
            else:
                raise ValueError(f"unknown bigram init {self.config.init!r}")

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.token_embedding_table(idx)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def dirichlet_log_prior(self) -> torch.Tensor:
        """Sum over all cells of log P(j | i).

        Adding `alpha / N` times its negative to the mean cross-entropy over N training tokens
        is the same as counting `alpha` extra observations of every pair: the optimum of that
        objective is exactly the add-alpha (Laplace) smoothed bigram table.
        """
        return F.log_softmax(self.token_embedding_table.weight, dim=-1).sum()

    def probability_table(self) -> torch.Tensor:
        """P(next = j | current = i) as a (V, V) tensor whose rows sum to 1."""
        return F.softmax(self.token_embedding_table.weight, dim=-1)

    def token_vectors(self) -> torch.Tensor:
        """Row i of the table: tokens with similar rows are followed by similar tokens."""
        return self.token_embedding_table.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """What the model reads at each position (B, T, V): the current token's table row."""
        return self.token_embedding_table(idx)

    # The hooks through which the trainer (models.train), which knows no particular model,
    # trains this one: GPT has the same methods.

    @classmethod
    def for_training(
        cls, settings: BigramTrainingSettings, vocab_size: int, train_ids: torch.Tensor
    ) -> BigramLanguageModel:
        """A table initialised as `settings.init` says (`empirical` counts `train_ids`)."""
        model = cls(BigramConfig(vocab_size=vocab_size, init=settings.init))
        model.init_weights(train_ids)
        return model

    def training_objective(
        self, loss: torch.Tensor, settings: BigramTrainingSettings, train_tokens: int
    ) -> torch.Tensor:
        """`loss` (a mean over batch targets) less the add-`laplace` prior's share per token of
        the training split, whose optimum is the smoothed table (see dirichlet_log_prior)."""
        if settings.laplace <= 0:
            return loss
        prior_weight = settings.laplace / train_tokens
        return loss - prior_weight * self.dirichlet_log_prior()

    @torch.no_grad()
    def next_token_distributions(self, probe: torch.Tensor) -> torch.Tensor:
        """What drift is measured on: the whole table, which holds every context (so the
        probe batch, which a model with longer contexts needs, plays no part)."""
        return self.probability_table().float().cpu()

    @torch.no_grad()
    def distance_from_optimum(
        self, train_ids: torch.Tensor, val_ids: torch.Tensor
    ) -> tuple[float, float]:
        """(mean absolute difference between the table and the empirical one of `train_ids`,
        cross-entropy of that empirical table on `val_ids`): where training should end up."""
        empirical = empirical_table(bigram_counts(train_ids, self.config.vocab_size))
        table_mae = (self.probability_table().float().cpu() - empirical).abs().mean().item()
        return table_mae, table_cross_entropy(empirical, val_ids)

    def training_diagnostics(
        self, train_ids: torch.Tensor, val_ids: torch.Tensor
    ) -> dict[str, float]:
        """What each evaluation logs besides the losses."""
        table_mae, optimum = self.distance_from_optimum(train_ids, val_ids)
        return {"table_mae": table_mae, "bigram_optimum": optimum}

    def final_diagnostics(
        self, train_ids: torch.Tensor, val_ids: torch.Tensor, val_loss: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """At the end of a run, for the best weights whose full-pass loss is `val_loss`: the
        metrics the checkpoint's manifest carries, and what the report adds to them."""
        table_mae, optimum = self.distance_from_optimum(train_ids, val_ids)
        metrics = {"table_mae": table_mae, "bigram_optimum_val_loss": optimum}
        return metrics, {"gap_to_optimum": val_loss - optimum}

    def manifest_extras(self, train_ids: torch.Tensor) -> dict[str, Any]:
        """The training split's counts, from which the service and the pictures rebuild the
        empirical table (too large to store for big vocabularies)."""
        if self.config.vocab_size > MAX_VOCAB_FOR_STORED_COUNTS:
            return {}
        return {"bigram_counts": bigram_counts(train_ids, self.config.vocab_size).tolist()}
