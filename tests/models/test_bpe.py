import json

import pytest
import torch

import models.dataset as dataset_module
import models.train as train_module
from models.checkpoint import load_checkpoint, save_checkpoint
from models.cli import main
from models.config import TrainConfig
from models.dataset import prepare_dataset
from models.gpt import GPT, GPTConfig
from models.tokenizer import BPETokenizer, tokenizer_from_dict
from models.train import LOG_FILE, REPORT_FILE

UNSEEN = "Ünïcødé → 日本語 🎉 ½ \t\r\n\x00 naïve café ẞ 𝔘𝔫𝔦"


@pytest.fixture(scope="module")
def tokenizer(small_corpus) -> BPETokenizer:
    return BPETokenizer.train(small_corpus.read_text(), vocab_size=300)


def test_vocabulary_has_the_size_asked_for(tokenizer):
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 300


def test_round_trip_of_any_unicode_never_out_of_vocabulary(tokenizer, small_corpus):
    assert set("日本語🎉\x00") - set(small_corpus.read_text()), "characters the corpus lacks"
    for text in (UNSEEN, small_corpus.read_text()[:2000], "", " ", "\n\n"):
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text


def test_a_common_word_is_one_token_shown_as_its_text(tokenizer):
    ids = tokenizer.encode(" the")
    assert len(ids) == 1
    assert tokenizer.token_text(ids[0]) == " the"


def test_start_id_is_the_newline_token(tokenizer):
    assert tokenizer.encode("\n") == [tokenizer.start_id]
    assert tokenizer.token_text(tokenizer.start_id) == "\n"


def test_serialises_through_a_json_dict(tokenizer):
    data = json.loads(json.dumps(tokenizer.to_dict()))
    again = tokenizer_from_dict(data)
    assert isinstance(again, BPETokenizer) and again.vocab_size == tokenizer.vocab_size
    assert again.encode(UNSEEN) == tokenizer.encode(UNSEEN)


def test_unknown_or_malformed_tokenizers_are_refused():
    with pytest.raises(ValueError, match="unsupported tokenizer kind 'wordpiece'"):
        tokenizer_from_dict({"kind": "wordpiece"})
    with pytest.raises(ValueError, match="malformed BPE tokenizer"):
        tokenizer_from_dict({"kind": "bpe", "tokenizer": {"model": 3}})


def test_checkpoint_keeps_the_bpe_tokenizer(tokenizer, tmp_path, small_corpus):
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2))
    save_checkpoint(tmp_path, gpt, tokenizer, {})
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded.tokenizer, BPETokenizer)
    for text in (UNSEEN, small_corpus.read_text()[:500]):
        assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded.tokenizer.start_id == tokenizer.start_id


def test_merges_are_never_learned_on_validation_text(small_corpus, tmp_path, monkeypatch):
    # Validation text that the training text's merges compress far better than the training
    # text itself: the token split then falls before 90% of the characters, and the merges
    # must be relearned on the shorter prefix.
    train = small_corpus.read_text()[:9000]
    text = train + " the" * 250
    (tmp_path / "corpus.txt").write_text(text)
    learned_on: list[str] = []
    original = BPETokenizer.train.__func__

    def recording_train(cls, texts, vocab_size: int) -> BPETokenizer:
        learned_on.append("".join(texts))
        return original(cls, learned_on[-1], vocab_size)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(recording_train))
    dataset = prepare_dataset(tmp_path / "corpus.txt", tmp_path / "data", "bpe", 300)
    tokenizer = dataset.tokenizer
    assert isinstance(tokenizer, BPETokenizer)
    assert dataset.manifest["split"]["bpe_learned_on_chars"] == len(learned_on[-1])
    encoding = tokenizer.hf.encode(text)
    val_start = encoding.offsets[int(0.9 * len(encoding.ids))][0]
    assert len(learned_on) > 1, "the first split should have overlapped validation"
    assert len(learned_on[-1]) <= val_start
    assert text.startswith(learned_on[-1])


@pytest.mark.parametrize("model", ["gpt", "bigram"])
def test_training_with_bpe_lowers_the_loss_and_its_checkpoint_loads(
    small_corpus, tmp_path, capsys, model
):
    args = ["train", model, "--data", str(small_corpus), "--out", str(tmp_path),
            "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "40",
            "--eval-interval", "20", "--eval-iters", "4", "--device", "cpu"]  # fmt: skip
    if model == "gpt":
        args += ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
                 "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5"]  # fmt: skip
    assert main(args) == 0
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.1
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.1
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.tokenizer.kind == "bpe"
    assert checkpoint.tokenizer.vocab_size == checkpoint.model.config.vocab_size == 300
    # `tinygpt eval` splits the same way the trainer did: its val loss is the report's.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path), "--data", str(small_corpus)]) == 0
    result = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert result["tokens"] == report["val_tokens"]
    assert result["loss"] == pytest.approx(report["val_loss"], abs=1e-6)


def test_vocab_size_needs_bpe_and_room_for_the_bytes(small_corpus, tmp_path, capsys):
    base = ["train", "gpt", "--data", str(small_corpus), "--out", str(tmp_path)]
    assert main([*base, "--vocab-size", "300"]) == 2
    assert "--vocab-size applies to --tokenizer bpe only" in capsys.readouterr().err
    assert main([*base, "--tokenizer", "bpe", "--vocab-size", "100"]) == 2
    assert "too small" in capsys.readouterr().err


def test_resume_keeps_the_learned_vocabulary(small_corpus, tmp_path, monkeypatch):
    cfg = TrainConfig(
        model="bigram", data=str(small_corpus), out=str(tmp_path), max_steps=20,
        eval_interval=10, eval_iters=2, device="cpu", tokenizer="bpe", vocab_size=300,
    )  # fmt: skip
    first = train_module.Trainer(cfg)
    first.train()

    def must_not_learn(*args, **kwargs):
        raise AssertionError("a resumed run must reuse the saved tokenizer")

    monkeypatch.setattr(dataset_module, "learn_bpe", must_not_learn)
    resumed = train_module.Trainer(cfg, resume=True)
    assert resumed.tokenizer.to_dict() == first.tokenizer.to_dict()
