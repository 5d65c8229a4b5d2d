import math

import pytest
import torch
import torch.nn as nn

from models.gpt import GPT, GPTConfig

V = 17


def make(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(GPTConfig(**{**config, **overrides}))


def test_shapes_and_loss_near_ln_v_at_init():
    model = make()
    idx = torch.randint(V, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, V)
    # Small initial weights give near-uniform predictions.
    assert loss.item() == pytest.approx(math.log(V), abs=0.1)


def test_lm_head_is_tied_to_token_embedding():
    model = make()
    assert model.lm_head.weight is model.transformer.wte.weight
    # Both names stay in the state dict, on one storage, which a checkpoint stores once.
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    named = dict(model.named_parameters(remove_duplicate=False))
    assert named["lm_head.weight"] is named["transformer.wte.weight"]
    # Counted once: every name's tensor, less the second name of the shared one.
    every_name = sum(p.numel() for p in named.values())
    assert model.num_parameters() == every_name - model.transformer.wte.weight.numel()


def test_init_follows_the_stated_scheme():
    model = make(n_layer=4, n_embd=128, n_head=4)
    for embedding in (model.transformer.wte, model.transformer.wpe):
        assert embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        if isinstance(module, nn.Linear) and module is not model.lm_head:
            assert torch.all(module.bias == 0)
    # Xavier-uniform on c_fc (fan_in 128, fan_out 512) has std sqrt(2 / (128 + 512)).
    c_fc = model.transformer.h[0].mlp.c_fc.weight
    assert c_fc.std().item() == pytest.approx(math.sqrt(2 / 640), rel=0.05)
    # Residual projections additionally scaled by 1/sqrt(2 * n_layer).
    c_proj = model.transformer.h[0].mlp.c_proj.weight
    expected = math.sqrt(2 / 640) / math.sqrt(2 * 4)
    assert c_proj.std().item() == pytest.approx(expected, rel=0.05)


def test_scaled_embeddings_multiply_token_embeddings_by_sqrt_n_embd():
    plain, scaled = make(), make(scale_embeddings=True)
    scaled.load_state_dict(plain.state_dict())
    idx = torch.randint(V, (1, 4))
    pos = torch.arange(4)
    wte, wpe = plain.transformer.wte(idx), plain.transformer.wpe(pos)
    assert torch.allclose(plain.embed(idx, pos), wte + wpe)
    assert torch.allclose(scaled.embed(idx, pos), wte * math.sqrt(32) + wpe)


def test_attention_is_causal():
    model = make().eval()
    idx = torch.randint(V, (1, 10))
    changed = idx.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :7], b[0, :7], atol=1e-6)
    assert not torch.allclose(a[0, 7:], b[0, 7:])


def test_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        make()(torch.zeros(1, 17, dtype=torch.long))


def test_n_embd_must_divide_by_heads():
    with pytest.raises(ValueError, match="multiple"):
        GPTConfig(vocab_size=V, n_embd=30, n_head=4)
