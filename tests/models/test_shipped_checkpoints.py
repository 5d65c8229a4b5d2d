"""The checkpoints committed under checkpoints/ load, verify, and meet their loss targets."""

from pathlib import Path

import pytest
import torch

from models.bigram import bigram_counts, empirical_table, table_cross_entropy
from models.checkpoint import load_checkpoint
from models.data import split_named
from models.evaluation import full_pass_loss

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.mark.parametrize(
    ("name", "vocab_size"), [("bigram-char", 65), ("gpt-char", 65), ("gpt-bpe", 2048)]
)
def test_shipped_checkpoint_loads_and_is_small(name, vocab_size):
    checkpoint = load_checkpoint(CHECKPOINTS / name)
    assert checkpoint.kind == name.split("-")[0]
    assert checkpoint.tokenizer.vocab_size == vocab_size
    total = sum(p.stat().st_size for p in (CHECKPOINTS / name).iterdir())
    assert total < 25 * 2**20


def test_shipped_bigram_is_within_0005_of_the_count_based_optimum(canonical_corpus):
    checkpoint = load_checkpoint(CHECKPOINTS / "bigram-char")
    ids = torch.tensor(checkpoint.tokenizer.encode(canonical_corpus))
    val = split_named(ids, "val")
    table = checkpoint.model.probability_table().detach()
    counts = torch.tensor(checkpoint.manifest["bigram_counts"])
    optimum = table_cross_entropy(empirical_table(counts), val)
    assert optimum == pytest.approx(2.482, abs=5e-4)
    assert table_cross_entropy(table, val) < optimum + 0.005
    assert (table - empirical_table(counts)).abs().mean().item() < 1e-3
    assert torch.equal(counts, bigram_counts(split_named(ids, "train"), 65))


@pytest.mark.slow
def test_shipped_gpt_val_loss_is_at_most_165(canonical_corpus):
    checkpoint = load_checkpoint(CHECKPOINTS / "gpt-char")
    ids = torch.tensor(checkpoint.tokenizer.encode(canonical_corpus))
    val = split_named(ids, "val")[:30_000]
    with torch.inference_mode():
        loss, _ = full_pass_loss(checkpoint.model, val, checkpoint.model.block_size)
    assert loss <= 1.65
