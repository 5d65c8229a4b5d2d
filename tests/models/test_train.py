import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.cli import main
from models.config import TrainConfig
from models.data import split_named
from models.evaluation import full_pass_loss
from models.resume import resumed_config, saved_state_meta
from models.train import LOG_FILE, REPORT_FILE, Trainer

REPO = Path(__file__).resolve().parents[2]
TINY_GPT = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8)
# A twentieth of the tokens per step of the bigram's defaults (256 x 64): plenty for these tests.
SMALL_BIGRAM = dict(block_size=64, batch_size=12)


def config(corpus, out, model, **overrides) -> TrainConfig:
    base = dict(
        model=model,
        data=str(corpus),
        out=str(out),
        max_steps=60,
        eval_interval=20,
        eval_iters=4,
        device="cpu",
        learning_rate=3e-3 if model == "gpt" else 0.1,
        warmup_steps=5,
    )
    base.update(TINY_GPT if model == "gpt" else SMALL_BIGRAM)
    return TrainConfig(**{**base, **overrides})


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


@pytest.mark.parametrize("model", ["bigram", "gpt"])
def test_a_few_steps_lower_the_loss_and_write_a_checkpoint(small_corpus, tmp_path, model):
    report = Trainer(config(small_corpus, tmp_path, model)).train()
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [0, 20, 40, 60]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.1
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.1
    assert "drift" in log[1] and log[1]["drift"] > 0
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.kind == model
    assert checkpoint.manifest["metrics"]["val_loss"] == pytest.approx(report["val_loss"])
    assert (tmp_path / REPORT_FILE).is_file() and (tmp_path / "loss_curve.png").is_file()
    assert report["val_tokens"] > 0 and report["best_step"] in (20, 40, 60)


def test_bigram_report_carries_its_diagnostics(small_corpus, tmp_path):
    report = Trainer(config(small_corpus, tmp_path, "bigram", laplace=1.0)).train()
    assert 0 < report["table_mae"] < 0.05
    assert report["gap_to_optimum"] == pytest.approx(
        report["val_loss"] - report["bigram_optimum_val_loss"]
    )
    assert "bigram_counts" in load_checkpoint(tmp_path).manifest


# --precision bf16 on a CPU without native bf16 warns that it is slow, and still trains.
bf16_anywhere = pytest.mark.filterwarnings("ignore:this cpu has no native bf16")


@bf16_anywhere
def test_a_bf16_run_trains_in_bf16_and_keeps_fp32_weights(small_corpus, tmp_path):
    runs = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        cfg = config(small_corpus, out, "gpt", precision=precision, max_steps=40)
        runs[precision] = (Trainer(cfg).train(), read_log(out), load_checkpoint(out))
    report, log, checkpoint = runs["bf16"]
    assert log[-1]["val_loss"] < log[0]["val_loss"] - 0.1
    assert [r["precision"] for r in log] == ["bf16"] * 3
    assert report["precision"] == checkpoint.manifest["metrics"]["precision"] == "bf16"
    assert report["config"]["precision"] == checkpoint.manifest["training"]["precision"] == "bf16"
    weights = checkpoint.model.state_dict().values()
    assert all(w.dtype == torch.float32 for w in weights if w.is_floating_point())
    # The same seed gives both runs the same weights at step 0: their estimates there differ by
    # the precision alone, and their weights after training by the training's precision alone.
    fp32_report, fp32_log, _ = runs["fp32"]
    assert fp32_report["precision"] == "fp32"
    assert log[0]["val_loss"] != fp32_log[0]["val_loss"]
    assert log[0]["val_loss"] == pytest.approx(fp32_log[0]["val_loss"], abs=0.02)
    assert report["val_loss"] != fp32_report["val_loss"]
    assert report["val_loss"] == pytest.approx(fp32_report["val_loss"], abs=0.05)
    # The reported val loss is the full pass in fp32 over the best weights, as served.
    ids = torch.tensor(checkpoint.tokenizer.encode(small_corpus.read_text(encoding="utf-8")))
    fp32_pass, _ = full_pass_loss(checkpoint.model, split_named(ids, "val"), 16)
    assert report["val_loss"] == fp32_pass


class Interrupted(Exception):
    pass


@bf16_anywhere
def test_a_resumed_run_keeps_its_precision_or_takes_the_one_given(
    small_corpus, tmp_path, monkeypatch, capsys
):
    train_step = Trainer.accumulate_gradients

    def stop_at_step_30(trainer: Trainer) -> float:
        if trainer.state.step == 30:  # the state was saved at step 20's evaluation
            raise Interrupted
        return train_step(trainer)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "accumulate_gradients", stop_at_step_30)
        with pytest.raises(Interrupted):
            Trainer(config(small_corpus, tmp_path, "gpt", precision="fp32", max_steps=40)).train()
    assert resumed_config(tmp_path).precision == "fp32"  # not given: the saved one
    assert resumed_config(tmp_path, precision="bf16").precision == "bf16"

    assert main(["train", "gpt", "--out", str(tmp_path), "--resume", "--precision", "bf16"]) == 0
    log = read_log(tmp_path)
    assert [(r["step"], r["precision"]) for r in log] == [(0, "fp32"), (20, "fp32"), (40, "bf16")]
    assert log[-1]["val_loss"] < log[1]["val_loss"]
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["steps"] == 40 and report["precision"] == "bf16"
    assert json.loads(capsys.readouterr().out)["steps"] == 40


def test_plateau_stops_early(small_corpus, tmp_path):
    # A learning rate of zero never improves: stop after `patience` evaluations.
    cfg = config(small_corpus, tmp_path, "bigram", learning_rate=0.0, patience=2, max_steps=200)
    report = Trainer(cfg).train()
    assert report["stopped_early"] and report["steps"] == 40


def test_checkpoint_is_written_only_when_val_improves(small_corpus, tmp_path):
    cfg = config(small_corpus, tmp_path, "bigram", learning_rate=0.0, patience=2, max_steps=200)
    Trainer(cfg).train()
    assert load_checkpoint(tmp_path).manifest["metrics"]["step"] == 0


def test_unwritable_output_folder_fails_clearly(small_corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "bigram", "--data", str(small_corpus),
         "--out", str(blocker / "out")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot write to output folder" in result.stderr
    assert "Traceback" not in result.stderr


def run_train(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "models.train", "gpt", "--data", str(corpus), "--out", str(out),
            "--steps", "300", "--eval-interval", "20", "--eval-iters", "4", "--device", "cpu",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16",
            "--batch-size", "8", "--dropout", "0.1", *extra]  # fmt: skip
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_matches_an_uninterrupted_run(small_corpus, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_train(small_corpus, whole).wait(timeout=300) == 0

    proc = run_train(small_corpus, killed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = killed / LOG_FILE
        if log.is_file() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    saved_step = saved_state_meta(killed)["state"]["step"]
    assert 0 < saved_step < 300, "the run must be killed part-way through"

    resumed = run_train(small_corpus, killed, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert read_log(killed) == read_log(whole)
    reports = [json.loads((d / REPORT_FILE).read_text()) for d in (whole, killed)]
    assert reports[0]["val_loss"] == reports[1]["val_loss"]
    assert reports[0]["best_step"] == reports[1]["best_step"]


def test_resume_without_state_fails_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "gpt", "--out", str(tmp_path), "--resume"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2 and "nothing to resume" in result.stderr
