"""The KV-cache path (prefill, then one token per step) against full recomputation."""

import pytest
import torch

from models.gpt import GPT, GPTConfig
from models.sampling import SamplingParams, generate, seeded_generator

V = 23


def make(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=V, block_size=24, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


@torch.inference_mode()
def test_prefill_gives_the_last_position_of_forward_in_any_slots():
    model = make()
    idx = torch.randint(V, (3, 10))
    full, _ = model(idx)
    cache = model.new_cache(max_slots=6)
    logits = model.prefill(idx, cache, slots=torch.tensor([4, 0, 2]))
    torch.testing.assert_close(logits, full[:, -1], atol=1e-4, rtol=0)
    # the keys and values landed in the rows asked for, and nowhere else
    assert cache.kv[:, [1, 3, 5]].abs().sum() == 0
    assert cache.kv[:, [4, 0, 2], :, :, :10].abs().sum(dim=(0, 2, 3, 4, 5)).ne(0).all()


@pytest.mark.parametrize("tight_span", [False, True], ids=["whole-block", "tight-span"])
@pytest.mark.parametrize("explicit_attention", [False, True], ids=["sdpa", "explicit"])
@torch.inference_mode()
def test_decoding_rows_of_different_lengths_matches_recompute(
    explicit_attention: bool, tight_span: bool
):
    model = make()
    lengths = [3, 11, 7]  # prompt lengths: every row at its own position
    seqs = torch.randint(V, (3, 24))
    full, _ = model(seqs)
    cache = model.new_cache(max_slots=3)
    for row, n in enumerate(lengths):
        model.prefill(seqs[row : row + 1, :n], cache, torch.tensor([row]))
    positions = torch.tensor(lengths)
    rows = torch.arange(3)
    for _ in range(24 - max(lengths)):
        # reading only up to the longest row's new position changes nothing
        span = int(positions.max()) + 1 if tight_span else None
        logits = model.decode(seqs[rows, positions], cache, positions, explicit_attention, span)
        torch.testing.assert_close(logits, full[rows, positions], atol=1e-4, rtol=0)
        positions += 1


@torch.inference_mode()
def test_moving_a_row_moves_its_sequence():
    model = make(scale_embeddings=True)
    seqs = torch.randint(V, (2, 9))
    full, _ = model(seqs)
    cache = model.new_cache(max_slots=4)
    model.prefill(seqs[:, :8], cache, torch.tensor([3, 1]))
    cache.move(3, 0)  # row 0 now holds sequence 0, row 1 sequence 1
    logits = model.decode(seqs[:, 8], cache, torch.tensor([8, 8]))
    torch.testing.assert_close(logits, full[:, 8], atol=1e-4, rtol=0)


@torch.inference_mode()
def test_greedy_text_with_the_cache_is_the_recompute_text():
    model = make()
    prompt = [5, 1, 7, 7, 2]
    new_tokens = 24 - len(prompt)  # stays within block_size: no windowing on either side
    expected = generate(
        model, prompt, new_tokens, SamplingParams(temperature=0.0), seeded_generator(0)
    )
    cache = model.new_cache(max_slots=1)
    logits = model.prefill(torch.tensor([prompt]), cache, torch.tensor([0]))
    out = [int(logits.argmax(dim=-1))]
    while len(out) < new_tokens:
        position = torch.tensor([len(prompt) + len(out) - 1])
        logits = model.decode(torch.tensor(out[-1:]), cache, position)
        out.append(int(logits.argmax(dim=-1)))
    assert out == expected
