"""Training targets on this machine: the bigram against its count-based optimum, and the
reference GPT setting's full-pass val loss and training throughput.

    python -m bench.train_reference [--data PATH] [--out bench/results/training.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from models.bigram import (
    BigramConfig,
    BigramLanguageModel,
    bigram_counts,
    empirical_table,
    table_cross_entropy,
)
from models.config import TrainConfig
from models.data import load_corpus, train_val_split
from models.evaluation import full_pass_loss
from models.tokenizer import CharTokenizer
from models.train import Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
REFERENCE_GPT = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_steps=2000,
    learning_rate=1e-3, dropout=0.0, warmup_steps=100, eval_interval=200, eval_iters=50,
)  # fmt: skip
# The trainer's defaults for the bigram (models/config.py MODEL_DEFAULTS).
BIGRAM = dict(
    max_steps=3000, batch_size=64, block_size=256, learning_rate=0.1, min_lr_ratio=0.01,
    warmup_steps=0, weight_decay=0.0, eval_interval=100, eval_iters=20,
)  # fmt: skip


def machine() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # Other work on the machine slows training: the load average says how much there was.
        "load_average_at_start": os.getloadavg(),
    }


def train(data: Path, model: str, **settings) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(model=model, data=str(data), out=out, device="cpu", **settings)
        started = time.perf_counter()
        report = Trainer(cfg).train()
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def bigram_results(data: Path) -> dict:
    text = load_corpus(data)
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text))
    train_ids, val_ids = train_val_split(ids)
    table = empirical_table(bigram_counts(train_ids, tokenizer.vocab_size))
    optimum = table_cross_entropy(table, val_ids)

    warm = BigramLanguageModel(BigramConfig(tokenizer.vocab_size, init="empirical"))
    warm.init_weights(bigram_counts(train_ids, tokenizer.vocab_size))
    warm_loss, _ = full_pass_loss(warm, val_ids, 256)

    results = {"count_based_optimum": optimum, "empirical_init_step0_val": warm_loss}
    for name, laplace in (("zeros_laplace_prior", 1.0), ("zeros_no_prior", 0.0)):
        report = train(data, "bigram", init="zeros", laplace=laplace, **BIGRAM)
        results[name] = {
            "val_loss": report["val_loss"],
            "gap_to_optimum": report["gap_to_optimum"],
            "table_mae": report["table_mae"],
            "wall_seconds": report["wall_seconds"],
        }
    return results


def gpt_results(data: Path) -> dict:
    report = train(data, "gpt", **REFERENCE_GPT)
    keys = ("val_loss", "val_loss_sampled", "parameters", "tokens_per_second", "train_seconds")
    return {k: report[k] for k in keys} | {"settings": REFERENCE_GPT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench/results/training.json"))
    parser.add_argument("--only", choices=["bigram", "gpt"])
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    if args.only != "gpt":
        results["bigram"] = bigram_results(args.data)
    if args.only != "bigram":
        results["gpt_reference"] = gpt_results(args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
