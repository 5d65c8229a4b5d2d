import json
import os

import pytest
import torch

from models.bigram import BigramConfig, BigramLanguageModel
from models.checkpoint import (
    MANIFEST_FILE,
    PENDING_SUFFIX,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from models.gpt import GPT, GPTConfig
from models.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer.from_text("abcdefghij \n")
V = TOKENIZER.vocab_size


def models():
    torch.manual_seed(0)
    bigram = BigramLanguageModel(BigramConfig(vocab_size=V, init="normal"))
    bigram.init_weights()
    gpt = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16))
    return [bigram, gpt]


@pytest.mark.parametrize("model", models(), ids=["bigram", "gpt"])
def test_save_load_gives_identical_logits(tmp_path, model):
    save_checkpoint(tmp_path, model, TOKENIZER, {"val_loss": 1.0})
    loaded = load_checkpoint(tmp_path)
    idx = torch.randint(V, (2, 8))
    model.eval()
    assert torch.equal(model(idx)[0], loaded.model(idx)[0])
    assert loaded.tokenizer.chars == TOKENIZER.chars
    manifest = loaded.manifest
    assert manifest["format_version"] == 1
    assert manifest["metrics"] == {"val_loss": 1.0}
    assert {"kind", "config", "weights_sha256", "torch_version", "created_at"} <= set(manifest)


def test_tied_weights_stay_tied_after_loading(tmp_path):
    gpt = models()[1]
    save_checkpoint(tmp_path, gpt, TOKENIZER, {})
    loaded = load_checkpoint(tmp_path).model
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_no_pickle_anywhere(tmp_path):
    save_checkpoint(tmp_path, models()[1], TOKENIZER, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    json.loads((tmp_path / MANIFEST_FILE).read_text())


def test_tampered_weights_are_refused_naming_the_folder(tmp_path):
    save_checkpoint(tmp_path, models()[1], TOKENIZER, {})
    weights = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    weights[-5] ^= 0xFF
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=str(tmp_path)) as info:
        load_checkpoint(tmp_path)
    assert "does not match the sha256" in str(info.value)


def test_truncated_weights_are_refused(tmp_path):
    save_checkpoint(tmp_path, models()[0], TOKENIZER, {})
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or were modified"):
        load_checkpoint(tmp_path)


def test_other_format_version_is_refused(tmp_path):
    save_checkpoint(tmp_path, models()[0], TOKENIZER, {})
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path)


def test_kill_between_the_two_renames_still_loads_the_new_weights(tmp_path):
    bigram = models()[0]
    save_checkpoint(tmp_path, bigram, TOKENIZER, {"v": 1})
    old_manifest = (tmp_path / MANIFEST_FILE).read_text()
    with torch.no_grad():
        bigram.token_embedding_table.weight.add_(1.0)
    save_checkpoint(tmp_path, bigram, TOKENIZER, {"v": 2})
    # Put the folder in the state a kill right after the weights' rename leaves behind.
    os.replace(tmp_path / MANIFEST_FILE, tmp_path / (MANIFEST_FILE + PENDING_SUFFIX))
    (tmp_path / MANIFEST_FILE).write_text(old_manifest)
    loaded = load_checkpoint(tmp_path)
    assert loaded.manifest["metrics"] == {"v": 2}
    assert torch.equal(
        loaded.model.token_embedding_table.weight, bigram.token_embedding_table.weight
    )
