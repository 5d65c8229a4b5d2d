"""Large corpora: preparing one, and starting to train from it, against nanoGPT's way.

    python -m bench.data [--size MB] [--bpe-size MB] [--out bench/results/data.json]

Generates a corpus of `--size` MB (the shared corpus repeated, else the suite's stand-in) in a
temporary folder, then runs, each in a process of its own so that its peak RSS is its own:
`tinygpt prepare` with the char and the BPE tokenizer (throughput, peak RSS; BPE on the
first `--bpe-size` MB, since on a small machine it encodes some 50 times slower); the nanoGPT-style
char encoder on the same text (the whole text read, a Python list comprehension over its
characters, then a numpy array); training the reference GPT from the char dataset (process
start to the end of its first step, peak RSS); and the bigram's step at V = 4,096.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.train_reference import DEFAULT_DATA, REFERENCE_GPT, machine
from tests.conftest import FALLBACK_TEXT

REPO = Path(__file__).resolve().parents[1]

# A program's own peak RSS: VmHWM, which starts afresh at exec (ru_maxrss would carry over the
# RSS of this benchmark's process, which forked it).
PEAK_RSS_MB = 'int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024'

# Runs `python -m MODULE ARGS...` in this process and writes its peak RSS (and, when the
# trainer is the module, the wall-clock time its first step ended) to the file in $BENCH_OUT.
CHILD = f"""
import json, os, re, runpy, sys, time
result = {{}}
if sys.argv[1] == "models.cli" and sys.argv[2] == "train":
    from models.train import Trainer
    original_init, original = Trainer.__init__, Trainer.accumulate_gradients
    def ready(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        result["ready_at"] = time.time()
    Trainer.__init__ = ready
    def first_step(self):
        loss = original(self)
        result.setdefault("first_step_at", time.time())
        return loss
    Trainer.accumulate_gradients = first_step
try:
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
result["peak_rss_mb"] = {PEAK_RSS_MB}
with open(os.environ["BENCH_OUT"], "w") as f:
    json.dump(result, f)
"""

# nanoGPT's data/shakespeare_char/prepare.py, on the same text, minus its printing.
NANOGPT_CHAR = """
import sys
import numpy as np
data = open(sys.argv[1], encoding="utf-8").read()
chars = sorted(list(set(data)))
stoi = {ch: i for i, ch in enumerate(chars)}
def encode(s):
    return [stoi[c] for c in s]
n = len(data)
train_ids = encode(data[: int(n * 0.9)])
val_ids = encode(data[int(n * 0.9) :])
np.array(train_ids, dtype=np.uint16).tofile(sys.argv[2] + "/train.bin")
np.array(val_ids, dtype=np.uint16).tofile(sys.argv[2] + "/val.bin")
"""

# The bigram's training step at V = 4,096 (the default batch, 64 x 256), timed between the
# starts of successive steps of the trainer's own loop.
BIGRAM_STEP = """
import json, sys, time
import numpy as np
import torch
from models.config import TrainConfig
from models.dataset import prepare_dataset
from models.train import Trainer
V, steps = 4096, 12
rng = np.random.default_rng(0)
# Zipf-like frequencies over 4,096 CJK characters, as in a multilingual corpus.
weights = 1.0 / np.arange(1, V + 1)
codes = 0x4E00 + rng.choice(V, size=2_000_000, p=weights / weights.sum())
codes[:V] = 0x4E00 + np.arange(V)  # every character present
open(sys.argv[1] + "/cjk.txt", "w", encoding="utf-8").write("".join(map(chr, codes)))
dataset = prepare_dataset(sys.argv[1] + "/cjk.txt", sys.argv[1] + "/cjk")
starts = []
original = Trainer.accumulate_gradients
def timed(self):
    starts.append(time.perf_counter())
    return original(self)
Trainer.accumulate_gradients = timed
cfg = TrainConfig(model="bigram", data=None, dataset=str(dataset.path), out=sys.argv[1] + "/run",
                  max_steps=steps, eval_interval=1000, eval_iters=1, device="cpu")
Trainer(cfg).train()
per_step = np.diff(starts)[1:]  # the first step pays for allocating the optimizer state
print(json.dumps({"vocab_size": dataset.tokenizer.vocab_size, "steps_timed": len(per_step),
                  "median_step_seconds": float(np.median(per_step)),
                  "max_step_seconds": float(per_step.max()),
                  "torch_threads": torch.get_num_threads()}))
"""


def make_corpus(path: Path, size_mb: int) -> int:
    source = DEFAULT_DATA.read_text(encoding="utf-8") if DEFAULT_DATA.is_file() else FALLBACK_TEXT
    block = source.encode("utf-8")
    target = size_mb * 1_000_000
    with open(path, "wb") as f:
        for _ in range(max(1, target // len(block))):
            f.write(block)
    return path.stat().st_size


def run_child(argv: list[str], scratch: Path) -> dict:
    """Run `python -m argv...` under CHILD; its wall time, peak RSS and first-step time."""
    out = scratch / "child.json"
    started = time.time()
    subprocess.run(
        [sys.executable, "-c", CHILD, *argv],
        cwd=REPO,
        env={**os.environ, "BENCH_OUT": str(out)},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(out.read_text())
    result["seconds"] = time.time() - started
    for event in ("ready", "first_step"):  # the trainer built (data, model); its first step
        if f"{event}_at" in result:
            result[f"{event}_after_start_seconds"] = result.pop(f"{event}_at") - started
    return result


def run_script(code: str, *args: str) -> tuple[float, float, str]:
    """Run `code` in a fresh interpreter: (seconds, peak RSS in MB, its stdout)."""
    wrapped = code + f"\nimport re\nprint({PEAK_RSS_MB})"
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-c", wrapped, *args],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    lines = done.stdout.strip().splitlines()
    return time.time() - started, float(lines[-1]), "\n".join(lines[:-1])


def prepare(corpus: Path, dataset: Path, mb: float, scratch: Path, *options: str) -> dict:
    argv = ["models.cli", "prepare", "--data", str(corpus), "--out", str(dataset), *options]
    result = run_child(argv, scratch)
    result["mb_per_second"] = mb / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1000, help="corpus size in MB")
    parser.add_argument("--bpe-size", type=int, help="BPE corpus size in MB (default --size)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/data.json"))
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        corpus = scratch / "corpus.txt"
        mb = make_corpus(corpus, args.size) / 1e6
        results["corpus_mb"] = round(mb, 1)
        char = prepare(corpus, scratch / "char", mb, scratch)
        results["prepare_char"] = char
        print("prepare char", json.dumps(char), flush=True)

        (scratch / "nanogpt").mkdir()
        seconds, rss, _ = run_script(NANOGPT_CHAR, str(corpus), str(scratch / "nanogpt"))
        baseline = {"seconds": seconds, "peak_rss_mb": rss, "mb_per_second": mb / seconds}
        results["nanogpt_char_baseline"] = baseline
        results["char_vs_baseline"] = {
            "throughput_ratio": char["mb_per_second"] / baseline["mb_per_second"],
            "peak_rss_ratio": char["peak_rss_mb"] / baseline["peak_rss_mb"],
        }
        print("nanoGPT char", json.dumps(baseline), flush=True)

        gpt = {k: str(v) for k, v in REFERENCE_GPT.items() if k != "max_steps"}
        train = [
            "models.cli",
            "train",
            "gpt",
            "--dataset",
            str(scratch / "char"),
            "--out",
            str(scratch / "run"),
            "--steps",
            "1",
            "--device",
            "cpu",
            "--val-tokens",
            "10000",
        ]  # fmt: skip: the final pass is not what is timed
        for name, value in gpt.items():
            train += ["--" + name.replace("_", "-").replace("learning-rate", "lr"), value]
        startup = run_child(train, scratch)
        results["train_gpt_from_char_dataset"] = startup
        print("train start-up", json.dumps(startup), flush=True)

        if args.bpe_size and args.bpe_size < args.size:
            mb = make_corpus(corpus, args.bpe_size) / 1e6
            results["bpe_corpus_mb"] = round(mb, 1)
        bpe = prepare(corpus, scratch / "bpe", mb, scratch, "--tokenizer", "bpe")
        results["prepare_bpe"] = bpe
        print("prepare bpe", json.dumps(bpe), flush=True)

        _, _, step = run_script(BIGRAM_STEP, str(scratch))
        results["bigram_step_v4096"] = json.loads(step)
        print("bigram step", step, flush=True)
    results["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
