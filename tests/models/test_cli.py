import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.cli import main
from models.config import TrainConfig
from models.tokenizer import CharTokenizer
from models.train import Trainer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpt_checkpoint(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpt")
    cfg = TrainConfig(
        model="gpt", data=str(small_corpus), out=str(out), max_steps=20, eval_interval=10,
        eval_iters=2, device="cpu", n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8,
    )  # fmt: skip
    Trainer(cfg).train()
    return out


def test_eval_prints_the_full_pass_loss_as_json(gpt_checkpoint, small_corpus, capsys):
    assert main(["eval", "--checkpoint", str(gpt_checkpoint), "--data", str(small_corpus)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val"
    text = small_corpus.read_text()
    assert result["tokens"] == len(text) - int(0.9 * len(text)) - 1
    report = json.loads((gpt_checkpoint / "report.json").read_text())
    assert result["loss"] == pytest.approx(report["val_loss"], abs=1e-6)


def test_sample_is_reproducible_with_a_seed(gpt_checkpoint, capsys):
    args = ["sample", "--checkpoint", str(gpt_checkpoint), "--prompt", "The", "--seed", "7",
            "--max-new-tokens", "40"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("The") and len(first.rstrip("\n")) == 43


def test_sample_with_an_unknown_character_fails_clearly(gpt_checkpoint, capsys):
    vocab = CharTokenizer.from_dict(
        json.loads((gpt_checkpoint / "manifest.json").read_text())["tokenizer"]
    )
    assert "~" not in vocab.chars
    code = main(["sample", "--checkpoint", str(gpt_checkpoint), "--prompt", "a~"])
    assert code == 2
    assert "'~' at position 1" in capsys.readouterr().err


def test_console_script_reports_a_missing_corpus_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "models.train", "gpt", "--data", str(tmp_path / "none.txt"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_train_help_shows_each_models_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--lr LEARNING_RATE peak learning rate (default 0.1 for bigram, 0.001 for gpt)" in (
        help_text
    )
    assert "--n-layer N_LAYER gpt only (default 4)" in help_text
