import torch

from models.sampling import (
    BatchParams,
    SamplingParams,
    removed_by_filters,
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
        batch = BatchParams.stack(params, "cpu")
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
