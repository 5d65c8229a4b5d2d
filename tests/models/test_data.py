import pytest
import torch

from models.data import CorpusError, get_batch, load_corpus, sequential_batches, train_val_split


def test_folder_of_txt_files_is_joined_in_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("world")
    (tmp_path / "a.txt").write_text("hello ")
    (tmp_path / "notes.md").write_text("ignored")
    assert load_corpus(tmp_path) == "hello world"


def test_bad_corpora_get_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match="no .txt files"):
        load_corpus(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(bad)


def test_split_is_contiguous_90_10():
    ids = torch.arange(1000)
    train, val = train_val_split(ids)
    assert torch.equal(train, ids[:900]) and torch.equal(val, ids[900:])


def test_batches_are_shifted_windows():
    data = torch.arange(100)
    x, y = get_batch(data, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)


def test_sequential_batches_cover_every_target_once():
    data = torch.arange(103)
    targets = torch.cat([y.flatten() for _, y in sequential_batches(data, 10, 3)])
    assert torch.equal(targets.sort().values, torch.arange(1, 103))
