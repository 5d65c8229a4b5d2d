import math

import pytest
import torch
import torch.nn.functional as F

from models.bigram import (
    BigramConfig,
    BigramLanguageModel,
    bigram_counts,
    empirical_table,
    table_cross_entropy,
)
from models.device import autocast_for
from models.evaluation import full_pass_loss

V = 11


def make(init: str, train_ids: torch.Tensor | None = None) -> BigramLanguageModel:
    torch.manual_seed(0)
    model = BigramLanguageModel(BigramConfig(vocab_size=V, init=init))
    model.init_weights(None if train_ids is None else bigram_counts(train_ids, V))
    return model


def random_ids(n: int = 2000, seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (n,), generator=torch.Generator().manual_seed(seed))


def test_logits_shape_and_zeros_loss_is_ln_v():
    model = make("zeros")
    idx = random_ids(64).view(4, 16)
    logits, _ = model(idx)
    assert logits.shape == (4, 16, V)
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(V), abs=1e-6)


def test_pair_count_loss_and_gradient_are_the_logits_cross_entropy():
    # With repeated pairs and rows, and the prior in the objective, as in training.
    model = make("normal")
    x, y = random_ids(512, seed=1).view(8, 64), random_ids(512, seed=2).view(8, 64)
    _, loss = model(x, y)
    (loss - 0.3 * model.dirichlet_log_prior()).backward()
    fast = model.token_embedding_table.weight.grad.clone()
    model.zero_grad()
    weight = model.token_embedding_table.weight
    reference = F.cross_entropy(weight[x].view(-1, V), y.view(-1))
    (reference - 0.3 * F.log_softmax(weight, dim=-1).sum()).backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    assert torch.allclose(fast, weight.grad, atol=1e-6)
    assert fast.abs().max() > 1e-3  # the gradient compared is not zero


def test_bf16_autocast_leaves_the_bigrams_arithmetic_in_fp32():
    # The table's loss, prior and gradient are a lookup, exps and sums, none of which autocast
    # casts: trained under --precision bf16 the bigram computes exactly what it does in fp32,
    # so its optimum and table-error targets hold at any precision, with no fp32 exception.
    x, y = random_ids(512, seed=1).view(8, 64), random_ids(512, seed=2).view(8, 64)
    results = []
    for precision in ("fp32", "bf16"):
        model = make("normal")
        with autocast_for(torch.device("cpu"), precision):
            _, loss = model(x, y)
            objective = loss - 0.3 * model.dirichlet_log_prior()
        objective.backward()
        results.append((loss, objective, model.token_embedding_table.weight.grad))
    (loss32, objective32, grad32), (loss16, objective16, grad16) = results
    assert loss16.dtype == grad16.dtype == torch.float32
    assert torch.equal(loss16, loss32) and torch.equal(objective16, objective32)
    assert torch.equal(grad16, grad32) and grad32.abs().max() > 1e-3


def test_prior_after_a_weight_update_is_not_a_stale_one():
    model = make("normal")
    x = random_ids(64).view(4, 16)
    model(x, x)
    with torch.no_grad():
        model.token_embedding_table.weight.mul_(3.0)
    expected = F.log_softmax(model.token_embedding_table.weight, dim=-1).sum()
    assert model.dirichlet_log_prior().item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_targets_no_loss():
    _, loss = make("zeros")(random_ids(8).view(1, 8))
    assert loss is None


def test_normal_init_has_std_001():
    model = BigramLanguageModel(BigramConfig(vocab_size=200, init="normal"))
    model.init_weights()
    assert model.token_embedding_table.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_empirical_init_is_log_of_laplace_smoothed_counts():
    ids = random_ids()
    model = make("empirical", ids)
    counts = bigram_counts(ids, V)
    expected = (counts + 1) / (counts + 1).sum(dim=1, keepdim=True)
    assert torch.allclose(model.probability_table(), expected.float(), atol=1e-6)


def test_empirical_warm_start_is_the_count_based_optimum_at_step_zero():
    ids = random_ids(5000)
    train, val = ids[:4500], ids[4500:]
    model = make("empirical", train)
    optimum = table_cross_entropy(empirical_table(bigram_counts(train, V)), val)
    loss, tokens = full_pass_loss(model, val, block_size=128)
    assert tokens == len(val) - 1
    assert loss == pytest.approx(optimum, abs=1e-5)


def test_empirical_init_needs_data():
    with pytest.raises(ValueError, match="training split's counts"):
        make("empirical")


def test_counts_count_pairs():
    counts = bigram_counts(torch.tensor([0, 1, 0, 1, 1]), 2)
    assert counts.tolist() == [[0, 2], [1, 1]]


def test_probability_table_rows_sum_to_one():
    table = make("normal").probability_table()
    assert table.shape == (V, V)
    assert torch.allclose(table.sum(dim=1), torch.ones(V), atol=1e-6)


def test_dirichlet_prior_optimum_is_the_laplace_smoothed_table():
    # Full-batch minimisation of cross-entropy + prior lands on the add-one table.
    ids = random_ids(3000)
    model = make("zeros")
    x, y = ids[:-1].view(1, -1), ids[1:].view(1, -1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        _, loss = model(x, y)
        objective = loss - model.dirichlet_log_prior() / y.numel()
        objective.backward()
        return objective

    opt.step(closure)
    expected = empirical_table(bigram_counts(ids, V))
    assert (model.probability_table() - expected).abs().max().item() < 1e-4
