import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import models.data as data_module
import models.dataset as dataset_module
from models.cli import main
from models.config import TrainConfig
from models.data import CorpusError, load_corpus, text_sha256
from models.dataset import DatasetError, cached_dataset, open_dataset, prepare_dataset
from models.train import LOG_FILE, REPORT_FILE, Trainer
from tests.conftest import REPO, corpus_text

MIXED = "Ünïcødé → 日本語 🎉 naïve café ẞ 𝔘𝔫𝔦\n\tThe king's men — ½ of them.\r\nAll:  speak!\n\n"


@pytest.fixture
def small_pieces(monkeypatch):
    """Read 64-byte chunks and cut BPE pieces of 40 characters: every boundary case shows in
    a few KB (a character or a CR LF split between chunks, pieces within a chunk)."""
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 64)
    monkeypatch.setattr(dataset_module, "PIECE_CHARS", 40)


@pytest.fixture
def folder_corpus(tmp_path):
    """Mixed-script text split across three files of a folder, CR LF line ends included."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    text = corpus_text(3000)
    (folder / "a.txt").write_text(text[:1000] + MIXED, encoding="utf-8", newline="")
    (folder / "b.txt").write_text(MIXED * 20 + text[1000:2000], encoding="utf-8", newline="")
    (folder / "sub" / "c.txt").write_text(text[2000:] + MIXED, encoding="utf-8", newline="")
    return folder


@pytest.mark.parametrize("tokenizer,vocab_size", [("char", None), ("bpe", 300)])
def test_prepared_tokens_decode_to_the_corpus(
    folder_corpus, tmp_path, small_pieces, tokenizer, vocab_size
):
    text = load_corpus(folder_corpus)
    assert "\r" not in text and "日本語" in text  # CR LF read as LF, as text mode reads it
    dataset = prepare_dataset(folder_corpus, tmp_path / "data", tokenizer, vocab_size)
    ids = np.concatenate([np.asarray(dataset.train), np.asarray(dataset.val)]).tolist()
    assert dataset.tokenizer.decode(ids) == text
    # Encoded in pieces, the tokens are those of the text encoded whole.
    assert ids == dataset.tokenizer.encode(text)
    assert dataset.train.dtype == np.uint16


def test_manifest_holds_the_split_boundary_and_the_hashes(small_corpus, tmp_path):
    dataset = prepare_dataset(small_corpus, tmp_path / "data")
    manifest = json.loads((tmp_path / "data" / "dataset.json").read_text())
    text = load_corpus(small_corpus)
    assert manifest["split"]["train_tokens"] == len(dataset.train) == int(0.9 * len(text))
    assert len(dataset.train) + len(dataset.val) == len(text)
    assert manifest["source"]["text_sha256"] == text_sha256(text)
    for name in ("train", "val"):
        entry = manifest["files"][name]
        data = (tmp_path / "data" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert manifest["vocab_size"] == len(set(text)) and manifest["format_version"] == 1


def test_a_vocabulary_past_65536_tokens_is_stored_as_uint32(tmp_path):
    text = "".join(chr(c) for c in range(0x10000, 0x10000 + 70_000))  # past the surrogates
    (tmp_path / "wide.txt").write_text(text * 2, encoding="utf-8")
    dataset = prepare_dataset(tmp_path / "wide.txt", tmp_path / "data")
    assert dataset.tokenizer.vocab_size > 1 << 16 and dataset.train.dtype == np.uint32
    assert (
        dataset.tokenizer.decode(np.asarray(dataset.val).tolist())
        == (text * 2)[len(dataset.train) :]
    )


def test_a_modified_or_truncated_token_file_is_refused(small_corpus, tmp_path):
    prepare_dataset(small_corpus, tmp_path / "data")
    val = tmp_path / "data" / "val.bin"
    data = bytearray(val.read_bytes())
    data[10] ^= 1
    val.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="val.bin does not match the sha256"):
        open_dataset(tmp_path / "data")
    val.write_bytes(bytes(data[:-2]))
    with pytest.raises(DatasetError, match="val.bin holds"):
        open_dataset(tmp_path / "data")


def test_an_unchanged_dataset_is_not_hashed_again_and_a_changed_one_is(
    small_corpus, tmp_path, monkeypatch
):
    prepare_dataset(small_corpus, tmp_path / "data")
    hashed: list[str] = []
    real_sha256 = dataset_module.file_sha256
    monkeypatch.setattr(
        dataset_module, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path)
    )
    open_dataset(tmp_path / "data")
    assert hashed == []  # prepare recorded what it wrote
    val = tmp_path / "data" / "val.bin"
    data = bytearray(val.read_bytes())
    data[3] ^= 1
    val.write_bytes(bytes(data))  # same size, same inode
    with pytest.raises(DatasetError, match="val.bin does not match the sha256"):
        open_dataset(tmp_path / "data")
    data[3] ^= 1
    val.write_bytes(bytes(data))  # restored: hashed, but just written, so not recorded
    hashed.clear()
    open_dataset(tmp_path / "data")
    assert hashed == ["val.bin"]
    old = time.time() - 60
    os.utime(val, (old, old))
    open_dataset(tmp_path / "data")  # hashed once more, and recorded now
    hashed.clear()
    open_dataset(tmp_path / "data")
    assert hashed == []


def test_bad_corpora_are_named_with_the_offset(tmp_path, small_pieces):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("fine text " * 20)
    (folder / "b.txt").write_bytes(("é" * 100).encode() + b"caf\xe9 au lait")
    with pytest.raises(CorpusError, match=r"b\.txt is not UTF-8 text \(.* at byte 203\)"):
        prepare_dataset(folder, tmp_path / "data")
    for content in ("", "a"):
        (tmp_path / "short.txt").write_text(content)
        with pytest.raises(CorpusError, match="fewer than two characters"):
            prepare_dataset(tmp_path / "short.txt", tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.glob(".data.*")), "a failed prepare leaves no staging folder"


def test_training_from_data_prepares_once(small_corpus, tmp_path, monkeypatch):
    def cfg(out):
        return TrainConfig(
            model="bigram", data=str(small_corpus), out=str(out), max_steps=4,
            eval_interval=2, eval_iters=2, device="cpu", block_size=16, batch_size=4,
        )  # fmt: skip

    Trainer(cfg(tmp_path / "a")).train()

    def must_not_prepare(*args, **kwargs):
        raise AssertionError("the cached dataset should have been used")

    monkeypatch.setattr(dataset_module, "prepare_dataset", must_not_prepare)
    trainer = Trainer(cfg(tmp_path / "b"))
    assert trainer.data_sha256 == text_sha256(load_corpus(small_corpus))
    assert cached_dataset(small_corpus, "char", None).path == trainer.train_ids.path.parent


def test_train_from_a_prepared_dataset(small_corpus, tmp_path, capsys):
    assert main(["prepare", "--data", str(small_corpus), "--out", str(tmp_path / "ds"),
                 "--tokenizer", "bpe", "--vocab-size", "300"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"] == "bpe" and summary["vocab_size"] == 300
    out = tmp_path / "run"
    assert main(["train", "bigram", "--dataset", str(tmp_path / "ds"), "--out", str(out),
                 "--steps", "20", "--eval-interval", "10", "--eval-iters", "2",
                 "--val-tokens", "500", "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["tokenizer"] == "bpe" and report["config"]["vocab_size"] == 300
    assert report["val_tokens"] == 499  # the first 500 val tokens: 499 targets
    assert report["data_sha256"] == text_sha256(load_corpus(small_corpus))
    assert main(["train", "gpt", "--dataset", str(tmp_path / "ds"), "--out", str(out),
                 "--tokenizer", "char"]) == 2  # fmt: skip
    assert "brings its tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["bigram", "gpt"])
def test_resume_from_a_prepared_dataset_repeats_the_uninterrupted_run(
    small_corpus, tmp_path, monkeypatch, model
):
    dataset = prepare_dataset(small_corpus, tmp_path / "ds")
    settings = dict(
        model=model, data=None, dataset=str(dataset.path), max_steps=30, eval_interval=10,
        eval_iters=2, device="cpu", block_size=16, batch_size=4, n_layer=1, n_head=2, n_embd=16,
    )  # fmt: skip
    Trainer(TrainConfig(out=str(tmp_path / "whole"), **settings)).train()

    class Killed(Exception):
        pass

    saves = 0
    original = Trainer.save_state

    def save_then_die(self):
        nonlocal saves
        original(self)
        saves += 1
        if saves == 2:  # the state of step 10 is on disk
            raise Killed

    monkeypatch.setattr(Trainer, "save_state", save_then_die)
    with pytest.raises(Killed):
        Trainer(TrainConfig(out=str(tmp_path / "killed"), **settings)).train()
    monkeypatch.setattr(Trainer, "save_state", original)
    Trainer(TrainConfig(out=str(tmp_path / "killed"), **settings), resume=True).train()
    whole = (tmp_path / "whole" / LOG_FILE).read_text().splitlines()
    resumed = (tmp_path / "killed" / LOG_FILE).read_text().splitlines()
    losses = [[(r["train_loss"], r["val_loss"]) for r in map(json.loads, log)]
              for log in (whole, resumed)]  # fmt: skip
    assert len(losses[0]) == 4 and losses[0] == losses[1]


# VmHWM is this program's own peak; ru_maxrss would count the forking test process too.
MEMORY_PROBE = """
import re, sys
from models.dataset import prepare_dataset
prepare_dataset(sys.argv[1], sys.argv[2])
print(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) // 1024)
"""


@pytest.mark.slow
def test_preparing_200_mb_holds_a_bounded_amount_of_it(tmp_path):
    # Held whole, 200 MB of text is 200 MB as a string, 800 MB as code points and 400 MB
    # as tokens: a bound of 600 MB (the interpreter, numpy and torch take about 350) fails
    # any preparer that reads the corpus in one piece.
    block = (corpus_text(1_000_000) + MIXED).encode("utf-8")
    with open(tmp_path / "big.txt", "wb") as f:
        for _ in range(200_000_000 // len(block)):
            f.write(block)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "big.txt"), str(tmp_path / "ds")],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    peak_mb = int(result.stdout.strip())
    assert peak_mb < 600, f"peak RSS {peak_mb} MB"
    dataset = open_dataset(tmp_path / "ds")
    assert len(dataset.train) + len(dataset.val) == dataset.manifest["source"]["chars"]
