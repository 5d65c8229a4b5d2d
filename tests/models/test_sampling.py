import pytest
import torch

from models.sampling import (
    BatchParams,
    SamplingParams,
    penalize_counts,
    removed_by_filters,
    sample_batch,
    sample_next,
    scale_by_temperature,
    seeded_generator,
)

V = 10


def logits_batch(rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(3))


def gens(seeds):
    return [seeded_generator(s) for s in seeds]


def test_temperature_zero_is_greedy():
    logits = logits_batch()
    params = [SamplingParams(temperature=0.0)] * 4
    assert torch.equal(sample_next(logits, params, gens(range(4))), logits.argmax(dim=-1))


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = logits_batch()
    for params in (SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=1.0)):
        for seed in range(5):
            chosen = sample_next(logits, [params] * 4, gens([seed] * 4))
            assert torch.equal(chosen, logits.argmax(dim=-1))


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def kept(top_k=0, top_p=1.0, min_p=0.0):
        removed = removed_by_filters(
            logits, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p])
        )
        return (~removed[0]).tolist()

    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]
    assert kept(min_p=0.2) == [True, True, True, False]
    assert kept() == [True] * 4


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = logits_batch()
    for temperature in (1e-30, 1e-300, 5e-324):
        params = [SamplingParams(temperature=temperature)] * 4
        batch = BatchParams.stack(params, "cpu", V)
        assert torch.isfinite(scale_by_temperature(logits, batch.temperature)).all()
        assert torch.equal(sample_next(logits, params, gens(range(4))), logits.argmax(dim=-1))


def test_same_seed_same_draws_whatever_the_batch():
    logits = logits_batch(8)
    params = [SamplingParams(temperature=1.3, top_k=6)] * 8
    together = sample_next(logits, params, gens(range(8)))
    alone = [sample_next(logits[i : i + 1], params[:1], gens([i]))[0] for i in range(8)]
    assert together.tolist() == [int(t) for t in alone]


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    generator = seeded_generator(0)
    draws = [int(sample_next(logits, [SamplingParams()], [generator])) for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def test_repetition_penalty_moves_seen_tokens_away():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    assert int(sample_next(logits, [greedy], gens([0]), seen)) == 1
    assert int(sample_next(logits, [SamplingParams(temperature=0.0)], gens([0]), seen)) == 0


def test_presence_and_frequency_penalties_follow_openais_definition():
    logits = torch.tensor([[3.0, 2.5, 2.0, 0.0]])
    counts = torch.tensor([[2.0, 1.0, 0.0, 0.0]])  # token 0 generated twice, token 1 once
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.4)
    batch = BatchParams.stack([params], "cpu", 4)
    # by hand: logit - count * 0.4 - (count > 0) * 0.5
    expected = torch.tensor([[3.0 - 0.8 - 0.5, 2.5 - 0.4 - 0.5, 2.0, 0.0]])
    penalized = penalize_counts(logits, counts, batch.presence_penalty, batch.frequency_penalty)
    assert torch.allclose(penalized, expected)
    greedy = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.4)
    assert int(sample_next(logits, [greedy], gens([0]), counts=counts)) == 2  # 2.0 now leads
    assert int(sample_next(logits, [SamplingParams(temperature=0.0)], gens([0]))) == 0


def test_logit_bias_is_added_before_sampling():
    logits = logits_batch(2)
    top = logits.argmax(dim=-1)
    forbid = SamplingParams(temperature=0.0, logit_bias=((int(top[0]), -100.0),))
    force = SamplingParams(temperature=1.0, logit_bias=((3, 100.0),))
    chosen = sample_next(logits, [forbid, force], gens([0, 1]))
    assert int(chosen[0]) != int(top[0]) and int(chosen[1]) == 3
    assert int(chosen[0]) == int(logits[0].clone().index_fill_(0, top[:1], -1e9).argmax())


def test_penalties_and_bias_are_batch_invariant():
    logits = logits_batch(6)
    counts = torch.randint(0, 3, (6, V)).float()
    params = [
        SamplingParams(temperature=0.8, presence_penalty=i / 4, logit_bias=((i, 1.5),))
        for i in range(6)
    ]
    together = sample_next(logits, params, gens(range(6)), counts=counts)
    alone = [
        int(sample_next(logits[i : i + 1], params[i : i + 1], gens([i]), counts=counts[i : i + 1]))
        for i in range(6)
    ]
    assert together.tolist() == alone


def test_an_all_greedy_batch_needs_no_uniforms_and_any_other_does():
    logits = logits_batch()
    greedy = BatchParams.stack([SamplingParams(temperature=0.0)] * 4, "cpu", V)
    assert torch.equal(sample_batch(logits, greedy, None), logits.argmax(dim=-1))
    mixed = BatchParams.stack([SamplingParams(temperature=0.0), SamplingParams()] * 2, "cpu", V)
    with pytest.raises(ValueError, match="uniforms"):
        sample_batch(logits, mixed, None)
