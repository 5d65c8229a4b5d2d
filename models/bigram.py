"""Bigram language model: one V x V table whose row i holds the logits of the token after i."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.data import Tokens, TrainingData, as_tensor, pair_counts

BigramInit = Literal["zeros", "normal", "empirical"]
# The counts go into the manifest as JSON, V^2 numbers: fine for characters, but for a 2048-token
# BPE vocabulary they would make every checkpoint write tens of megabytes of text.
MAX_VOCAB_FOR_STORED_COUNTS = 512


@dataclass
class BigramConfig:
    vocab_size: int
    init: BigramInit = "zeros"


def bigram_counts(ids: Tokens, vocab_size: int) -> torch.Tensor:
    """counts[i, j] = how often token j follows token i in `ids` (streamed, see pair_counts)."""
    return pair_counts(ids, vocab_size)


def empirical_table(counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Laplace-smoothed P(next = j | current = i) from bigram counts."""
    smoothed = counts.double() + smoothing
    return (smoothed / smoothed.sum(dim=1, keepdim=True)).float()


def table_cross_entropy(table: torch.Tensor, ids: Tokens) -> float:
    """Mean -log P(next | current) of the pairs in `ids` under a probability table."""
    ids = as_tensor(ids)
    return -table[ids[:-1], ids[1:]].double().log().mean().item()


class _PairCountTerms(torch.autograd.Function):
    """From the table W and a batch's pair counts, in one pass over W: the batch's mean
    cross-entropy, every row's log-normaliser logsumexp(W_i), and sum(W) -- the pieces of the
    loss and of the Dirichlet prior (sum_ij log P(j | i) = sum(W) - V * sum_i logsumexp(W_i)).

    Autograd would allocate and fill a V x V tensor for each of those pieces' gradients; here
    the exponentials of the forward pass become W's whole gradient in place, so a step costs a
    few passes over the table whatever the batch. (Its backward runs once: no retain_graph.)
    """

    @staticmethod
    def forward(ctx, weight, pairs, pair_count, row_count, n_targets):
        peak = weight.amax(dim=1, keepdim=True)
        exps = torch.sub(weight, peak).exp_()  # (V, V)
        totals = exps.sum(dim=1)
        log_normalisers = totals.log() + peak.squeeze(1)
        pair_logits = weight.view(-1)[pairs]
        pair_term = (pair_count * pair_logits).sum()
        loss = ((row_count * log_normalisers).sum() - pair_term) / n_targets
        ctx.save_for_backward(exps, totals, pairs, pair_count, row_count)
        ctx.n_targets = n_targets
        return loss, log_normalisers, weight.sum()

    @staticmethod
    def backward(ctx, grad_loss, grad_normalisers, grad_sum):
        exps, totals, pairs, pair_count, row_count = ctx.saved_tensors
        # d/dW_ij = softmax(W_i)_j * (d/d logsumexp(W_i)) - [pair (i, j)] c_ij / N + d/d sum
        per_row = grad_loss * row_count / ctx.n_targets + grad_normalisers
        grad = exps.mul_((per_row / totals)[:, None])
        grad.view(-1).index_add_(0, pairs, pair_count * (-grad_loss / ctx.n_targets))
        return grad.add_(grad_sum), None, None, None, None


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
        # The last training batch's log-normalisers and sum(W), with the version of the weights
        # they were computed from: the prior of the same step reuses them (dirichlet_log_prior).
        self._table_terms: tuple[int, torch.Tensor, torch.Tensor] | None = None

    @property
    def block_size(self) -> int:
        return 1

    def init_weights(self, train_counts: torch.Tensor | None = None) -> None:
        """Apply `config.init`; `empirical` needs the training split's bigram counts."""
        weight = self.token_embedding_table.weight
        with torch.no_grad():
            if self.config.init == "zeros":
                weight.zero_()  # every row uniform: loss at init is exactly ln V
            elif self.config.init == "normal":
                weight.normal_(mean=0.0, std=0.01)
            elif self.config.init == "empirical":
                if train_counts is None:
                    raise ValueError("the empirical init needs the training split's counts")
                weight.copy_(empirical_table(train_counts).log())
            else:
                raise ValueError(f"unknown bigram init {self.config.init!r}")

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Without targets, the (B, T, V) logits; with targets, the mean cross-entropy alone,
        computed without them (see pair_count_loss): at V = 4,096 a default batch's logits
        are 268 MB, allocated, filled and freed at every step."""
        if targets is None:
            return self.token_embedding_table(idx), None
        return None, self.pair_count_loss(idx, targets)

    def pair_count_loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the pairs (idx, targets), from the batch's pair counts.

        Every occurrence of a pair (i, j) contributes the same -log P(j | i), so the loss is
        (sum over rows i of n_i * logsumexp(W_i) - sum over distinct pairs of c_ij * W_ij) / N:
        exactly cross_entropy over the logits, value and gradient, touching only the rows the
        batch holds, and those once each however often they occur.
        """
        vocab_size = self.config.vocab_size
        weight = self.token_embedding_table.weight
        pairs, pair_count = torch.unique(
            idx.reshape(-1) * vocab_size + targets.reshape(-1), return_counts=True
        )
        row_count = torch.bincount(idx.reshape(-1), minlength=vocab_size)
        loss, normalisers, weight_sum = _PairCountTerms.apply(
            weight, pairs, pair_count.to(weight.dtype), row_count.to(weight.dtype), targets.numel()
        )
        if torch.is_grad_enabled():
            self._table_terms = (weight._version, normalisers, weight_sum)
        return loss

    def dirichlet_log_prior(self) -> torch.Tensor:
        """Sum over all cells of log P(j | i).

        Adding `alpha / N` times its negative to the mean cross-entropy over N training tokens
        is the same as counting `alpha` extra observations of every pair: the optimum of that
        objective is exactly the add-alpha (Laplace) smoothed bigram table.
        """
        weight = self.token_embedding_table.weight
        terms = self._table_terms
        if terms is not None and terms[0] == weight._version and torch.is_grad_enabled():
            _, normalisers, weight_sum = terms  # this step's forward pass computed them
        else:
            normalisers, weight_sum = torch.logsumexp(weight, dim=-1), weight.sum()
        return weight_sum - self.config.vocab_size * normalisers.sum()

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
        cls, settings: BigramTrainingSettings, vocab_size: int, data: TrainingData
    ) -> BigramLanguageModel:
        """A table initialised as `settings.init` says (`empirical` counts the training split)."""
        model = cls(BigramConfig(vocab_size=vocab_size, init=settings.init))
        model.init_weights(model.train_counts(data) if settings.init == "empirical" else None)
        return model

    def train_counts(self, data: TrainingData) -> torch.Tensor:
        """The training split's bigram counts, counted once per run."""
        return data.derived(
            "bigram_counts", lambda: bigram_counts(data.train, self.config.vocab_size)
        )

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
    def distance_from_optimum(self, data: TrainingData) -> tuple[float, float]:
        """(mean absolute difference between the table and the empirical one of the training
        split, cross-entropy of that empirical table on the validation tokens): where training
        should end up."""
        empirical = data.derived(
            "empirical_table", lambda: empirical_table(self.train_counts(data))
        )
        table_mae = (self.probability_table().float().cpu() - empirical).abs().mean().item()
        optimum = data.derived("optimum", lambda: table_cross_entropy(empirical, data.val))
        return table_mae, optimum

    def training_diagnostics(self, data: TrainingData) -> dict[str, float]:
        """What each evaluation logs besides the losses."""
        table_mae, optimum = self.distance_from_optimum(data)
        return {"table_mae": table_mae, "bigram_optimum": optimum}

    @torch.no_grad()
    def timeline_snapshot(
        self, data: TrainingData, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """What the training timeline (models.timeline) records: P(next | current) for the
        rows and columns `token_ids` (K, K), and how far the whole table is from the training
        split's counts (see distance_from_counts)."""
        log_table = F.log_softmax(self.token_embedding_table.weight.double(), dim=-1).cpu()
        rows = log_table[token_ids].exp()[:, token_ids].float()
        return rows, self.distance_from_counts(log_table, data)

    def distance_from_counts(self, log_table: torch.Tensor, data: TrainingData) -> dict[str, float]:
        """From the table's log-probabilities (V, V): the total variation distance of each row
        from the add-one smoothed empirical row (the table training approaches, as in
        distance_from_optimum), averaged over rows (`tv_mean`) and weighted by how often each
        row's token occurs in the training split (`tv_weighted`); and `kl`, the
        frequency-weighted KL divergence of the unsmoothed empirical rows from the model's,
        sum_ij (c_ij / N) log(P_emp(j | i) / P(j | i)): exactly the full-pass training loss
        less its count-based optimum (the loss of the empirical table itself)."""
        counts = self.train_counts(data).double()
        empirical = data.derived(
            "empirical_table", lambda: empirical_table(self.train_counts(data))
        )
        row_counts = counts.sum(dim=1)
        tv = 0.5 * (log_table.exp() - empirical.double()).abs().sum(dim=1)  # (V,)
        seen = counts > 0
        log_empirical = (counts / row_counts.clamp(min=1)[:, None])[seen].log()
        kl = (counts[seen] * (log_empirical - log_table[seen])).sum() / counts.sum()
        return {
            "tv_mean": tv.mean().item(),
            "tv_weighted": (tv * row_counts).sum().item() / row_counts.sum().item(),
            "kl": kl.item(),
        }

    def final_diagnostics(
        self, data: TrainingData, val_loss: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """At the end of a run, for the best weights whose full-pass loss is `val_loss`: the
        metrics the checkpoint's manifest carries, and what the report adds to them."""
        table_mae, optimum = self.distance_from_optimum(data)
        metrics = {"table_mae": table_mae, "bigram_optimum_val_loss": optimum}
        return metrics, {"gap_to_optimum": val_loss - optimum}

    def manifest_extras(self, data: TrainingData) -> dict[str, Any]:
        """The training split's counts, from which the service and the pictures rebuild the
        empirical table (too large to store for big vocabularies)."""
        if self.config.vocab_size > MAX_VOCAB_FOR_STORED_COUNTS:
            return {}
        return {"bigram_counts": self.train_counts(data).tolist()}
