"""`tinygpt train --tensorboard`: event files TensorBoard reads, and projector embeddings."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from models.checkpoint import load_checkpoint
from models.cli import main
from models.interop.tokens import escape_token, token_bytes
from models.train import LOG_FILE

pytestmark = pytest.mark.interop


@pytest.mark.parametrize(
    ("model", "diagnostics"),
    [("bigram", ["diagnostics/table_mae", "diagnostics/bigram_optimum"]), ("gpt", [])],
)
def test_training_writes_scalars_and_embeddings(model, diagnostics, small_corpus, tmp_path):
    out, board = tmp_path / "ck", tmp_path / "tb"
    args = ["train", model, "--data", str(small_corpus), "--out", str(out), "--steps", "20",
            "--eval-interval", "10", "--eval-iters", "2", "--batch-size", "4",
            "--block-size", "16", "--device", "cpu", "--tensorboard", str(board)]  # fmt: skip
    if model == "gpt":
        args += ["--n-layer", "1", "--n-embd", "16", "--n-head", "2"]
    assert main(args) == 0

    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    events = EventAccumulator(str(board), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = ["loss/train", "loss/val", "optimizer/lr", "diagnostics/drift"]
    assert {*expected, "throughput/tokens_per_second", *diagnostics} <= tags
    val = [(e.step, e.value) for e in events.Scalars("loss/val")]
    assert val == [(r["step"], pytest.approx(r["val_loss"])) for r in log]
    speeds = [e.value for e in events.Scalars("throughput/tokens_per_second")]
    assert speeds[-1] > 0

    config = text_format.Parse((board / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert len(config.embeddings) == len(log)  # one table per evaluation
    tokenizer = load_checkpoint(out).tokenizer
    labels = [escape_token(token_bytes(tokenizer, i)) for i in range(tokenizer.vocab_size)]
    last = config.embeddings[-1]
    assert (board / last.metadata_path).read_text().splitlines() == labels
    rows = (board / last.tensor_path).read_text().splitlines()
    assert len(rows) == tokenizer.vocab_size
    assert len(rows[0].split("\t")) == (16 if model == "gpt" else tokenizer.vocab_size)
