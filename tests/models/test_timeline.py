"""The training timeline: recorded at step 0 and every evaluation, bounded, thinned evenly,
kept across a resume, and invisible to training itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.bigram import BigramConfig, BigramLanguageModel, bigram_counts, table_cross_entropy
from models.checkpoint import WEIGHTS_FILE, load_checkpoint
from models.data import TrainingData
from models.evaluation import full_pass_loss
from models.resume import STATE_FILE, resumed_config
from models.timeline import (
    MAX_FILE_BYTES,
    MAX_SNAPSHOTS,
    MAX_TOKENS,
    TIMELINE_FILE,
    Snapshot,
    Timeline,
    TimelineError,
    read_timeline,
    recorded_tokens,
    save_timeline,
)
from models.train import LOG_FILE, Trainer
from tests.models.test_distributed import clean_env, train_args
from tests.models.test_train import REPO, config


def timeline_of(out: Path) -> Timeline:
    timeline = read_timeline(out)
    assert timeline is not None, f"no {TIMELINE_FILE} in {out}"
    return timeline


# -- what a run records -------------------------------------------------------------------


def test_a_zeros_bigram_starts_uniform_and_its_distances_fall(small_corpus, tmp_path):
    Trainer(config(small_corpus, tmp_path, "bigram", init="zeros")).train()
    timeline = timeline_of(tmp_path)
    assert timeline.model == "bigram" and timeline.steps == [0, 20, 40, 60]
    vocab = timeline.vocab_size
    assert timeline.token_ids.tolist() == list(range(vocab))  # a small vocabulary: all of it
    first, last = timeline.snapshots[0], timeline.snapshots[-1]
    assert first.vectors.shape == (vocab, vocab)
    assert torch.equal(first.vectors, torch.full((vocab, vocab), 1 / vocab))
    # Step 0 is ln V from the optimum, exactly: the model predicts uniformly.
    checkpoint = load_checkpoint(tmp_path)
    counts = torch.tensor(checkpoint.manifest["bigram_counts"], dtype=torch.float64)
    rows = counts.sum(dim=1, keepdim=True)
    entropy = -(counts * (counts / rows.clamp(min=1)).log()).nan_to_num().sum() / counts.sum()
    assert first.metrics["kl"] == pytest.approx(math.log(vocab) - entropy.item(), abs=1e-9)
    for name in ("tv_mean", "tv_weighted", "kl"):
        assert last.metrics[name] < first.metrics[name] / 2, name
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [s.metrics["val_loss"] for s in timeline.snapshots] == [r["val_loss"] for r in log]


def test_the_bigram_kl_is_the_full_pass_train_loss_less_the_count_optimum(small_corpus):
    ids = torch.tensor(list(small_corpus.read_bytes()[:4000])) % 40
    data = TrainingData(train=ids, val=ids[:100])
    model = BigramLanguageModel(BigramConfig(vocab_size=40, init="normal"))
    model.init_weights()
    with torch.no_grad():
        model.token_embedding_table.weight.mul_(100)  # far from uniform
    _, measures = model.timeline_snapshot(data, torch.arange(40))
    counts = bigram_counts(ids, 40).double()
    mle = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    optimum = table_cross_entropy(mle.clamp(min=1e-300), ids)
    train_loss, _ = full_pass_loss(model, ids, block_size=256)
    assert measures["kl"] == pytest.approx(train_loss - optimum, abs=2e-5)
    assert measures["kl"] > 1


def test_a_gpt_records_its_embedding_rows(small_corpus, tmp_path):
    Trainer(config(small_corpus, tmp_path, "gpt")).train()
    timeline = timeline_of(tmp_path)
    assert timeline.model == "gpt" and timeline.steps == [0, 20, 40, 60]
    checkpoint = load_checkpoint(tmp_path)
    best = checkpoint.manifest["metrics"]["step"]
    snapshot = timeline.snapshots[timeline.steps.index(best)]
    assert torch.equal(snapshot.vectors, checkpoint.model.transformer.wte.weight.detach())
    assert set(snapshot.metrics) == {"train_loss", "val_loss"}


# -- recording changes nothing ------------------------------------------------------------


@pytest.mark.parametrize("model", ["bigram", "gpt"])
def test_recording_does_not_change_training(small_corpus, tmp_path, monkeypatch, model):
    """Dropout draws from the global generator: a recording that drew too would show."""
    overrides = {"dropout": 0.1} if model == "gpt" else {"init": "normal"}
    recorded, plain = tmp_path / "recorded", tmp_path / "plain"
    Trainer(config(small_corpus, recorded, model, **overrides)).train()
    monkeypatch.setattr(Trainer, "record_timeline", lambda self, record: None)
    Trainer(config(small_corpus, plain, model, **overrides)).train()
    assert (recorded / TIMELINE_FILE).is_file() and not (plain / TIMELINE_FILE).exists()
    for name in (WEIGHTS_FILE, LOG_FILE):
        assert (recorded / name).read_bytes() == (plain / name).read_bytes(), name
    # The state's header names the folder; its tensors (AdamW's moments, every generator's
    # state) are what must agree.
    states = [load_file(out / STATE_FILE) for out in (recorded, plain)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# -- resuming -----------------------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("where", ["before_the_timeline", "between_timeline_and_state"])
def test_a_resumed_run_keeps_its_timeline(small_corpus, tmp_path, monkeypatch, where):
    """Interrupted at the third evaluation, either before anything of it is written or after
    its snapshot but before its resume state (so the file holds one snapshot too many), the
    resumed run ends with the timeline of the run that was never stopped."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    overrides = dict(dropout=0.1, max_steps=100)
    Trainer(config(small_corpus, whole, "gpt", **overrides)).train()

    method = "record_timeline" if where == "before_the_timeline" else "save_state"
    original = getattr(Trainer, method)
    calls = []

    def interrupt_at_the_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted
        return original(self, *args)

    monkeypatch.setattr(Trainer, method, interrupt_at_the_third)
    with pytest.raises(Interrupted):
        Trainer(config(small_corpus, stopped, "gpt", **overrides)).train()
    expected = [0, 20, 40] if where == "between_timeline_and_state" else [0, 20]
    assert timeline_of(stopped).steps == expected
    monkeypatch.setattr(Trainer, method, original)

    Trainer(resumed_config(stopped), resume=True).train()
    assert timeline_of(stopped).steps == [0, 20, 40, 60, 80, 100]
    assert (stopped / TIMELINE_FILE).read_bytes() == (whole / TIMELINE_FILE).read_bytes()


# -- the bound and the thinning -----------------------------------------------------------


def snapshot(step: int, rows: int, width: int) -> Snapshot:
    return Snapshot(step, {"train_loss": 1.0, "val_loss": 1.0}, torch.zeros(rows, width))


@pytest.mark.parametrize("width", [16, 512, 1024])
def test_a_long_run_stays_under_the_bound_thinned_evenly(tmp_path, width):
    """A thousand evaluations of 256 rows, from narrow ones to rows so wide that only a few
    snapshots fit: the file stays under its bound, step 0 and the last stay, the rest lie on
    an even grid, and the best step (the checkpoint's weights) is kept wherever it falls."""
    timeline = Timeline("gpt", vocab_size=300, eval_interval=10, token_ids=torch.arange(256))
    best = 0
    for evaluation in range(1000):
        step = 10 * evaluation
        best = step if evaluation in (0, 130, 517) else best
        timeline.add(snapshot(step, 256, width), best_step=best)
        assert len(timeline.snapshots) <= timeline.capacity <= MAX_SNAPSHOTS
    save_timeline(tmp_path, timeline)
    assert (tmp_path / TIMELINE_FILE).stat().st_size <= MAX_FILE_BYTES
    steps = timeline.steps
    assert steps[0] == 0 and steps[-1] == 9990 and 5170 in steps
    grid = [s for s in steps if s not in (5170, 9990)]
    gaps = {b - a for a, b in zip(grid, grid[1:], strict=False)}
    assert len(gaps) == 1 and len(grid) >= timeline.capacity // 2
    assert timeline_of(tmp_path).steps == steps


def test_a_large_vocabulary_records_its_most_frequent_tokens():
    vocab = 1000
    ids = torch.cat([torch.arange(vocab), torch.arange(300).repeat(3), torch.tensor([999] * 9)])
    data = TrainingData(train=ids, val=ids[:10])
    chosen = recorded_tokens(data, vocab, MAX_TOKENS)
    assert chosen[0] == 999 and sorted(chosen[1:].tolist()) == list(range(MAX_TOKENS - 1))
    model = BigramLanguageModel(BigramConfig(vocab_size=vocab))
    model.init_weights()
    timeline = Timeline("bigram", vocab, eval_interval=1)
    timeline.record(model, data, {"step": 0, "train_loss": 1.0, "val_loss": 1.0}, best_step=0)
    rows = timeline.snapshots[0].vectors
    assert rows.shape == (MAX_TOKENS, MAX_TOKENS)
    assert torch.allclose(rows, torch.full_like(rows, 1 / vocab))  # slices of uniform rows
    assert MAX_SNAPSHOTS * rows.nbytes > MAX_FILE_BYTES > timeline.capacity * rows.nbytes


def test_rows_too_wide_for_three_snapshots_record_fewer_tokens():
    class Wide:
        def timeline_snapshot(self, data, token_ids):
            return torch.zeros(len(token_ids), 4096), {}

    data = TrainingData(train=torch.arange(300), val=torch.arange(10))
    timeline = Timeline("gpt", vocab_size=300, eval_interval=1)
    timeline.record(Wide(), data, {"step": 0, "train_loss": 1.0, "val_loss": 1.0}, 0)  # type: ignore[arg-type]
    assert len(timeline.token_ids) == 64  # 256 rows of 16 KiB: three would not fit
    assert timeline.capacity * timeline.snapshots[0].vectors.nbytes <= MAX_FILE_BYTES


# -- the file -----------------------------------------------------------------------------


def test_a_folder_without_a_timeline_has_none(tmp_path):
    assert read_timeline(tmp_path) is None


def test_a_file_that_is_no_timeline_is_refused_clearly(tmp_path):
    (tmp_path / TIMELINE_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(TimelineError, match="is not a training timeline"):
        read_timeline(tmp_path)
    (tmp_path / TIMELINE_FILE).write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    with pytest.raises(TimelineError, match="5,000,001 bytes, more than the 5,000,000"):
        read_timeline(tmp_path)


def test_a_timeline_of_other_tokens_or_format_is_refused(tmp_path):
    timeline = Timeline("gpt", vocab_size=10, eval_interval=1, token_ids=torch.arange(10))
    timeline.add(snapshot(0, 10, 4), best_step=0)
    timeline.token_ids = torch.arange(5, 15)
    save_timeline(tmp_path, timeline)
    with pytest.raises(TimelineError, match="token ids outside the vocabulary of 10"):
        read_timeline(tmp_path)
    timeline.token_ids = torch.arange(10)
    save_timeline(tmp_path, timeline)
    assert timeline_of(tmp_path).steps == [0]
    data = (
        (tmp_path / TIMELINE_FILE)
        .read_bytes()
        .replace(b'format_version\\": 1', b'format_version\\": 9')
    )
    (tmp_path / TIMELINE_FILE).write_bytes(data)
    with pytest.raises(TimelineError, match="timeline format 9, this build reads 1"):
        read_timeline(tmp_path)


# -- several processes --------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_record_the_timeline_of_one(small_corpus, tmp_path):
    """Rank 0 alone records (and writes): the timeline of two processes is that of one, to
    the float32 rounding the two runs differ by (see tests/models/test_distributed.py)."""
    one, two = tmp_path / "one", tmp_path / "two"
    for out, launcher in (
        (one, [sys.executable, "-m", "models.train"]),
        (two, [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "models.train"]),
    ):  # fmt: skip
        result = subprocess.run(
            [*launcher, *train_args(small_corpus, out)],
            capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    single, ddp = timeline_of(one), timeline_of(two)
    assert ddp.steps == single.steps == [0, 10, 20, 30, 40]
    for a, b in zip(single.snapshots, ddp.snapshots, strict=True):
        assert torch.allclose(a.vectors, b.vectors, atol=1e-5)
        assert a.metrics == pytest.approx(b.metrics, abs=1e-5)
