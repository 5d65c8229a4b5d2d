"""Export to Hugging Face transformers, and import GPT-2 folders, against the real library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from models.checkpoint import Checkpoint, load_checkpoint
from models.cli import main
from models.interop import InteropError
from models.interop.hf import export_hf, import_hf
from models.sampling import SamplingParams, generate
from models.tokenizer import BPETokenizer, CharTokenizer, UnknownCharacterError
from tests.conftest import corpus_text
from tests.models.interop.conftest import PROMPT, random_gpt_checkpoint
from tests.models.interop.gpt2 import gpt2_folder
from tests.models.test_shipped_checkpoints import CHECKPOINTS

pytestmark = pytest.mark.interop


def greedy(checkpoint: Checkpoint, prompt: str, tokens: int) -> list[int]:
    ids = checkpoint.tokenizer.encode(prompt)
    return generate(checkpoint.model, ids, tokens, SamplingParams(temperature=0), torch.Generator())


def our_logits(checkpoint: Checkpoint, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = checkpoint.model(torch.tensor([ids]))
    return logits[0]


def their_logits(model: GPT2LMHeadModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def exported(checkpoint: Checkpoint, out: Path):
    export_hf(checkpoint, out)
    return AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)


def test_shipped_gpt_runs_in_transformers_as_it_does_here(shipped_gpt, tmp_path):
    model, tokenizer = exported(shipped_gpt, tmp_path / "hf")
    assert isinstance(model, GPT2LMHeadModel)
    ids = shipped_gpt.tokenizer.encode(PROMPT)
    assert tokenizer(PROMPT).input_ids == ids
    assert tokenizer.decode(ids) == PROMPT
    diff = (their_logits(model, ids) - our_logits(shipped_gpt, ids)).abs().max().item()
    assert diff < 1e-5
    prompt = shipped_gpt.tokenizer.encode("KING")
    out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
    assert out[0, len(prompt) :].tolist() == greedy(shipped_gpt, "KING", 40)


def test_exported_folder_describes_our_model(tmp_path):
    checkpoint = load_checkpoint(CHECKPOINTS / "gpt-char")
    export_hf(checkpoint, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["n_positions"] == config["n_ctx"] == 128
    assert config["vocab_size"] == 65
    assert config["bos_token_id"] == checkpoint.tokenizer.encode("\n")[0]
    assert config["eos_token_id"] is None  # no end token: not GPT-2's 50256
    assert config["activation_function"] == "gelu"
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["bos_token_id"] == config["bos_token_id"]
    assert generation.get("eos_token_id") is None
    card = (tmp_path / "README.md").read_text()
    assert checkpoint.manifest["data_sha256"] in card
    assert f"{checkpoint.manifest['metrics']['val_loss']:.4f}" in card


def test_char_tokenizer_encodes_as_ours_and_drops_unknown_characters(unicode_gpt, tmp_path):
    _, tokenizer = exported(unicode_gpt, tmp_path)
    text = "a né€ \U0001f600\nvan"
    assert tokenizer(text).input_ids == unicode_gpt.tokenizer.encode(text)
    assert tokenizer.decode(unicode_gpt.tokenizer.encode(text)) == text
    # Where ours refuses characters outside the vocabulary, the exported one leaves them out.
    with pytest.raises(UnknownCharacterError):
        unicode_gpt.tokenizer.encode("xaüb")
    assert tokenizer("xaüb").input_ids == unicode_gpt.tokenizer.encode("ab")
    assert "dropped" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("settings", [{"bias": False}, {"scale_embeddings": True}, {}])
def test_export_then_import_gives_back_the_same_model(settings, tmp_path):
    chars = sorted(set(corpus_text(2000)))
    original = random_gpt_checkpoint(tmp_path / "original", chars, **settings)
    model, _ = exported(original, tmp_path / "hf")
    if settings.get("bias") is False:
        biases = [t for name, t in model.state_dict().items() if name.endswith(".bias")]
        assert biases and not any(t.any() for t in biases)
    ids = original.tokenizer.encode("First Citizen:\nBefore")
    diff = (their_logits(model, ids) - our_logits(original, ids)).abs().max().item()
    assert diff < 1e-5

    import_hf(tmp_path / "hf", tmp_path / "imported")
    imported = load_checkpoint(tmp_path / "imported")
    assert imported.manifest["config"] == original.manifest["config"]
    assert isinstance(imported.tokenizer, CharTokenizer)
    assert imported.tokenizer.chars == original.tokenizer.chars
    ours, back = original.model.state_dict(), imported.model.state_dict()
    assert ours.keys() == back.keys()
    for name, tensor in ours.items():
        torch.testing.assert_close(back[name], tensor, rtol=1e-6, atol=0.0, msg=name)
    p, q = (torch.softmax(our_logits(c, ids)[-1], dim=-1) for c in (original, imported))
    assert (p - q).abs().max().item() < 1e-6


def test_shipped_bpe_gpt_round_trips_through_transformers(tmp_path):
    original = load_checkpoint(CHECKPOINTS / "gpt-bpe")
    assert main(["export", "--checkpoint", str(original.path), "--format", "hf",
                 "--out", str(tmp_path / "hf")]) == 0  # fmt: skip
    assert main(["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ck")]) == 0
    imported = load_checkpoint(tmp_path / "ck")
    assert isinstance(imported.tokenizer, BPETokenizer)
    assert imported.tokenizer.encode(PROMPT) == original.tokenizer.encode(PROMPT)
    for name, tensor in original.model.state_dict().items():
        assert torch.equal(imported.model.state_dict()[name], tensor), name
    ids = original.tokenizer.encode(PROMPT)
    assert torch.equal(our_logits(imported, ids), our_logits(original, ids))


def test_import_of_a_gpt2_folder_computes_what_transformers_does(tmp_path):
    reference = gpt2_folder(tmp_path / "gpt2")
    import_hf(tmp_path / "gpt2", tmp_path / "ck")
    imported = load_checkpoint(tmp_path / "ck")
    assert imported.manifest["config"]["activation"] == "gelu_tanh"
    assert imported.model.block_size == 48
    text = "To be, or not to be<|endoftext|>"
    ids = imported.tokenizer.encode(text)
    assert ids == AutoTokenizer.from_pretrained(tmp_path / "gpt2")(text).input_ids
    assert ids[-1] == imported.tokenizer.vocab_size - 1  # the special token, whole
    diff = (our_logits(imported, ids) - their_logits(reference, ids)).abs().max().item()
    assert diff < 1e-5
    # and out again: bos and eos stay GPT-2's end-of-text token
    export_hf(imported, tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == ids[-1]
    assert config["activation_function"] == "gelu_new"


def test_import_refuses_other_architectures_by_name(tmp_path, capsys):
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(InteropError, match=r"'llama' \(LlamaForCausalLM\) is not GPT-2"):
        import_hf(tmp_path / "llama", tmp_path / "ck")
    assert main(["import", "--from-hf", str(tmp_path / "llama"), "--out", str(tmp_path / "c")]) == 2
    assert "is not GPT-2" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_import_refuses_a_gpt2_it_cannot_run_exactly(tmp_path):
    GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, n_inner=40)
    ).save_pretrained(tmp_path / "odd")
    with pytest.raises(InteropError, match="n_inner 40"):
        import_hf(tmp_path / "odd", tmp_path / "ck")


def test_bigram_has_no_transformers_export(tmp_path, capsys):
    args = ["export", "--checkpoint", str(CHECKPOINTS / "bigram-char"), "--format", "hf"]
    assert main([*args, "--out", str(tmp_path / "hf")]) == 2
    assert "bigram model, which has no transformers counterpart" in capsys.readouterr().err
