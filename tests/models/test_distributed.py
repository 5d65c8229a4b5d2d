import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.train import LOG_FILE, REPORT_FILE

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_ENV = {
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}

# Two ranks accumulate one micro-batch each; one process accumulates both. Rank r trains on
# micro-batch r of the single process's step, so the runs see the same batches and differ only
# in float32 rounding: the order in which gradients are summed (all-reduce against in-place
# accumulation) and the thread count inside each matmul (one per rank against two). Observed
# differences are ~1e-7; 1e-5 leaves room for 40 steps of Adam while any real divergence (a
# rank on the wrong batches, gradients not averaged) moves the losses by 1e-2 or more. Hence
# --precision fp32: under bf16 autocast (`auto` on a CPU with native bf16) those ~1e-7 flip
# matmul outputs to the next bf16 value now and then, and the losses part by more than 1e-5
# (3.6e-5 seen).
TOLERANCE = 1e-5


def train_args(corpus: Path, out: Path) -> list[str]:
    return ["gpt", "--data", str(corpus), "--out", str(out), "--steps", "40",
            "--eval-interval", "10", "--eval-iters", "4", "--device", "cpu", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "8",
            "--lr", "3e-3", "--warmup-steps", "5", "--grad-accum-steps", "2",
            "--precision", "fp32"]  # fmt: skip


def clean_env() -> dict[str, str]:
    """The test process' environment, minus anything that would make it look like a rank."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(small_corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, "-m", "models.train", *train_args(small_corpus, one)],
        capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    # --standalone: a rendezvous on a free local port, nothing outside the machine needed.
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "models.train", *train_args(small_corpus, two)],
        capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.count('"val_loss"') == 1, "only rank 0 prints the summary"

    # One checkpoint, written once: the folder holds what a single process writes.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert len(list(two.rglob("manifest.json"))) == 1
    checkpoint = load_checkpoint(two)
    report = json.loads((two / REPORT_FILE).read_text())
    assert report["processes"] == 2 and report["config"]["grad_accum_steps"] == 2

    log_one, log_two = read_log(one), read_log(two)
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == [0, 10, 20, 30, 40]
    for a, b in zip(log_one, log_two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=TOLERANCE)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=TOLERANCE)
        assert b["tokens_seen"] == a["tokens_seen"]
    assert log_two[-1]["val_loss"] < log_two[0]["val_loss"] - 0.1

    # The models compute the same function. (Their weights are compared through their
    # outputs: the attention's key bias has an exactly-zero gradient, so Adam moves it by
    # ~lr per step in whatever direction rounding noise points, without effect on the output.)
    idx = torch.randint(
        checkpoint.tokenizer.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0)
    )
    logits_two, _ = checkpoint.model(idx)
    logits_one, _ = load_checkpoint(one).model(idx)
    torch.testing.assert_close(logits_two, logits_one, rtol=0, atol=TOLERANCE)


def test_global_batch_that_the_processes_cannot_share_is_refused(small_corpus, tmp_path):
    # The check runs before the process group is joined, so a faked world shows it.
    env = {**clean_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "gpt", "--data", str(small_corpus),
         "--out", str(tmp_path), "--grad-accum-steps", "3"],
        capture_output=True, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--grad-accum-steps 3" in result.stderr and "multiple of the 2" in result.stderr
    assert "Traceback" not in result.stderr
