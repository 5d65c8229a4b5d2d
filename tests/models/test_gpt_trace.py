"""GPT.trace: the residual stream and attention weights of one forward pass, as `forward`
computes them."""

import pytest
import torch

from models.gpt import GPT, GPTConfig

V = 17


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=3, n_head=2, n_embd=32)).eval()
    # Initial weights attend almost uniformly; larger query/key weights make peaked patterns,
    # which tell a wrong softmax (or a mask off by one) from the right one.
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(6.0)
    return model


def test_the_weights_are_what_the_fused_attention_averages_values_with(model):
    x = torch.randn(2, 12, 32)
    for block in model.transformer.h:
        attn = block.attn
        weights = attn.attention_weights(x)  # (B, nh, T, T)
        _, _, v = attn.split_heads(x)
        assert torch.allclose(attn.merge_heads(weights @ v), attn(x), atol=1e-6)
    assert weights.amax() > 0.9  # the patterns really are peaked, not near uniform


def test_attention_rows_are_causal_distributions(model):
    trace = model.trace(torch.randint(V, (2, 16)))
    assert trace.attention.shape == (3, 2, 2, 16, 16)  # (n_layer, B, nh, T, T)
    above = torch.ones(16, 16, dtype=torch.bool).triu(diagonal=1)
    assert torch.all(trace.attention[..., above] == 0)
    assert torch.allclose(trace.attention.sum(dim=-1), torch.ones(3, 2, 2, 16), atol=1e-6)


def test_the_residual_stream_is_each_block_applied_in_turn(model):
    idx = torch.randint(V, (2, 10))
    trace = model.trace(idx)
    assert trace.residuals.shape == (4, 2, 10, 32)  # (n_layer + 1, B, T, C)
    assert torch.equal(trace.residuals[0], model.embed(idx, torch.arange(10)))
    for layer, block in enumerate(model.transformer.h):
        assert torch.equal(trace.residuals[layer + 1], block(trace.residuals[layer]))


def test_reading_out_the_last_depth_gives_forwards_logits_exactly(model):
    idx = torch.randint(V, (2, 16))
    logits, _ = model(idx)
    assert torch.equal(model.read_out(model.trace(idx).residuals[-1]), logits)


def test_a_trace_longer_than_the_context_is_refused(model):
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        model.trace(torch.zeros(1, 17, dtype=torch.long))
