"""Training targets on this machine: the bigram against its count-based optimum, the
reference GPT setting's full-pass val loss and training throughput, and our trainer side by
side with nanoGPT's own CPU recipe.

    python -m bench.train_reference [--data PATH] [--out bench/results/training.json]
                                    [--only bigram|gpt|nanogpt] [--iters N] [--threads N]

nanoGPT is not a dependency: its model (model.py), its optimizer set-up and its training loop
(train.py) are restated below as they run on a CPU, at config/train_shakespeare_char.py with
the CPU overrides of its README, and our trainer runs the same recipe on the same corpus
twice: at its default precision (`auto`: bf16 autocast where the CPU has native bf16, as
nanoGPT trains wherever its device has bf16) and at `fp32`, nanoGPT's precision on a CPU.
Every throughput is tokens trained over the training loop's wall time, its evaluations and
checkpoint writes included (what our trainer's `tokens_per_second` counts); every val loss is
the full pass in fp32 (`models.evaluation.full_pass_loss`: every target of the val split
once, in windows of the block size) over the same split, the last 10% of the corpus, of the
weights each run keeps: the best of its evaluations, as nanoGPT's `ckpt.pt` and our
checkpoint are.
`--iters` shortens the recipe for a quick check; the figures are the full 2000.

With --only, the file's other sections are kept as they were.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.bigram import (
    BigramConfig,
    BigramLanguageModel,
    bigram_counts,
    empirical_table,
    table_cross_entropy,
)
from models.checkpoint import atomic_write_json
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
# nanoGPT's `python train.py config/train_shakespeare_char.py --device=cpu --compile=False
# --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
# --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`: the config file's values
# under those overrides, and train.py's defaults for the rest (bias, weight decay, beta1, clip).
NANOGPT_RECIPE = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, bias=False,
    learning_rate=1e-3, max_iters=2000, lr_decay_iters=2000, min_lr=1e-4, warmup_iters=100,
    weight_decay=1e-1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250, eval_iters=20,
    log_interval=1, gradient_accumulation_steps=1, seed=1337,
)  # fmt: skip
# Our trainer's runs of nanoGPT's recipe, by result key: its default precision, and fp32.
OURS = (("ours", "auto"), ("ours_fp32", "fp32"))
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


# -- nanoGPT, restated ---------------------------------------------------------------------
# Its model.py as it is, less what its forward does only without targets (the inference-time
# head on the last position), from_pretrained and crop_block_size, which this recipe never
# calls.


@dataclass
class NanoGPTConfig:
    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's: PyTorch's had no bias=False then)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, config: NanoGPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t)
        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """Weight decay on the 2-D tensors (matmul weights, embeddings), none on the rest;
        fused AdamW on CUDA only. On a CPU that leaves torch's default, which there is its
        single-tensor loop (torch picks foreach kernels only for CUDA-like devices)."""
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for p in param_dict.values() if p.dim() >= 2]
        nodecay_params = [p for p in param_dict.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == "cuda"
        extra_args = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)


def nanogpt_lr(it: int, r: dict) -> float:
    """nanoGPT's get_lr: linear warmup from 0, cosine decay to min_lr at lr_decay_iters."""
    if it < r["warmup_iters"]:
        return r["learning_rate"] * it / r["warmup_iters"]
    if it > r["lr_decay_iters"]:
        return r["min_lr"]
    decay_ratio = (it - r["warmup_iters"]) / (r["lr_decay_iters"] - r["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return r["min_lr"] + coeff * (r["learning_rate"] - r["min_lr"])


def nanogpt_prepare(text: str, folder: Path) -> list[str]:
    """data/shakespeare_char/prepare.py: the sorted characters, the first 90% of the text to
    train.bin and the rest to val.bin as uint16 ids."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(text)
    for name, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9) :])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(folder / f"{name}.bin")
    return chars


def nanogpt_train(text: str, r: dict) -> dict:
    """train.py's loop on a CPU: no autocast (its ctx is a nullcontext there) and no gradient
    scaling (its float16 GradScaler disables itself without CUDA). It prints the loss every
    100 iterations where log_interval=1 prints it every one (the `.item()` is still taken at
    every iteration, as there), and skips the MFU estimate, a few float operations."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        chars = nanogpt_prepare(text, data_dir)
        block_size, batch_size = r["block_size"], r["batch_size"]

        def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            # recreated every batch, as nanoGPT does to avoid a memmap's memory growth
            data = np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
            ix = torch.randint(len(data) - block_size, (batch_size,))
            x = torch.stack(
                [torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix]
            )
            y = torch.stack(
                [torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix]
            )
            return x, y

        @torch.no_grad()
        def estimate_loss() -> dict[str, float]:
            out = {}
            model.eval()
            for split in ("train", "val"):
                losses = torch.zeros(r["eval_iters"])
                for k in range(r["eval_iters"]):
                    X, Y = get_batch(split)
                    _, loss = model(X, Y)
                    losses[k] = loss.item()
                out[split] = losses.mean().item()
            model.train()
            return out

        torch.manual_seed(r["seed"])
        config = NanoGPTConfig(
            block_size=block_size,
            vocab_size=len(chars),
            **{k: r[k] for k in ("n_layer", "n_head", "n_embd", "dropout", "bias")},
        )
        model = NanoGPT(config)
        optimizer = model.configure_optimizers(
            r["weight_decay"], r["learning_rate"], (r["beta1"], r["beta2"]), "cpu"
        )
        iter_num, best_val_loss, best_iter, best_state = 0, 1e9, 0, None
        load_at_start = os.getloadavg()
        X, Y = get_batch("train")
        t0 = started = time.time()
        while True:
            lr = nanogpt_lr(iter_num, r)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            if iter_num % r["eval_interval"] == 0:
                losses = estimate_loss()
                print(
                    f"nanoGPT step {iter_num}: train {losses['train']:.4f}, val {losses['val']:.4f}"
                )
                last_estimate = losses
                if losses["val"] < best_val_loss:
                    best_val_loss = losses["val"]
                    if iter_num > 0:
                        checkpoint = {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "model_args": vars(config),
                            "iter_num": iter_num,
                            "best_val_loss": best_val_loss,
                            "config": r,
                        }
                        # what nanoGPT writes (a pickle, never read back here); the copy in
                        # memory is what the full pass below evaluates
                        torch.save(checkpoint, data_dir / "ckpt.pt")
                        best_iter, best_state = iter_num, copy.deepcopy(model.state_dict())
            for _ in range(r["gradient_accumulation_steps"]):
                _, loss = model(X, Y)
                loss = loss / r["gradient_accumulation_steps"]
                X, Y = get_batch("train")  # the next batch, drawn while (on a GPU) this runs
                loss.backward()
            if r["grad_clip"] != 0.0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if iter_num % r["log_interval"] == 0:
                lossf = loss.item() * r["gradient_accumulation_steps"]
                if iter_num % 100 == 0:
                    print(f"nanoGPT iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms")
            iter_num += 1
            if iter_num > r["max_iters"]:
                break
        train_seconds = time.time() - started
        val_ids = torch.from_numpy(
            np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64)
        )
    tokens = iter_num * r["gradient_accumulation_steps"] * batch_size * block_size
    assert best_state is not None, "every recipe evaluates after its first eval_interval"
    model.load_state_dict(best_state)
    val_full, _ = full_pass_loss(model, val_ids, block_size)
    return {
        "precision": "fp32",  # its ctx: a nullcontext on a CPU
        "val_loss": val_full,
        "val_loss_estimate_at_best": best_val_loss,
        "best_iter": best_iter,
        "last_estimate": last_estimate,
        "iterations": iter_num,  # nanoGPT's loop takes max_iters + 1 steps
        "tokens": tokens,
        "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tokens / train_seconds),
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": "AdamW, torch's default implementation (no fused, no foreach on a CPU)",
        "vocabulary": chars,
        "val_ids": val_ids,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
    }


def ours_at_nanogpt_recipe(data: Path, r: dict, precision: str) -> dict:
    """Our trainer at the same recipe, every setting it shares with nanoGPT's named ours, in
    `precision`."""
    load_at_start = os.getloadavg()
    settings = dict(
        n_layer=r["n_layer"], n_head=r["n_head"], n_embd=r["n_embd"], block_size=r["block_size"],
        batch_size=r["batch_size"], dropout=r["dropout"], bias=r["bias"], max_steps=r["max_iters"],
        learning_rate=r["learning_rate"], min_lr_ratio=r["min_lr"] / r["learning_rate"],
        warmup_steps=r["warmup_iters"], weight_decay=r["weight_decay"], grad_clip=r["grad_clip"],
        eval_interval=r["eval_interval"], eval_iters=r["eval_iters"],
        grad_accum_steps=r["gradient_accumulation_steps"], seed=r["seed"], tokenizer="char",
        precision=precision,
    )  # fmt: skip
    report = train(data, "gpt", **settings)
    keys = (
        "precision", "val_loss", "val_loss_sampled", "best_step", "steps", "tokens_seen",
        "parameters",
    )  # fmt: skip
    return {k: report[k] for k in keys} | {
        "train_seconds": report["train_seconds"],
        "tokens_per_second": report["tokens_per_second"],
        "settings": settings,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
    }


def nanogpt_results(data: Path, iters: int | None) -> dict:
    recipe = dict(NANOGPT_RECIPE)
    if iters is not None:  # a quick check: fewer iterations, decay over them, evaluate at the end
        recipe |= dict(
            max_iters=iters, lr_decay_iters=iters, eval_interval=min(recipe["eval_interval"], iters)
        )
    text = load_corpus(data)
    theirs = nanogpt_train(text, recipe)
    # The same split and vocabulary as ours, checked rather than assumed.
    tokenizer = CharTokenizer.from_text(text)
    _, our_val = train_val_split(torch.tensor(tokenizer.encode(text)))
    if theirs.pop("vocabulary") != tokenizer.chars or not torch.equal(
        theirs.pop("val_ids"), our_val
    ):
        raise RuntimeError("nanoGPT's prepared val split is not ours: the comparison is off")
    ours = {name: ours_at_nanogpt_recipe(data, recipe, precision) for name, precision in OURS}
    return {
        "recipe": recipe,
        "val_procedure": (
            "full pass over the val split (the last 10% of the corpus, every target once, in "
            f"windows of {recipe['block_size']}) of each run's best evaluated weights"
        ),
        "throughput": "tokens trained / wall time of the training loop, evaluations included",
        "nanogpt": theirs,
        **ours,
        **{
            f"{name}_over_nanogpt_tokens_per_second": round(
                run["tokens_per_second"] / theirs["tokens_per_second"], 2
            )
            for name, run in ours.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("bench/results/training.json"))
    parser.add_argument("--only", choices=["bigram", "gpt", "nanogpt"])
    parser.add_argument(
        "--iters", type=int, help="nanoGPT's recipe with this many iterations (a quick check)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.iters is not None and args.iters < 1:
        parser.error("--iters must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    results: dict = {}
    if args.only and args.out.is_file():
        results = json.loads(args.out.read_text())
    # Each section carries the machine and the load it was measured under.
    if args.only in (None, "bigram"):
        results["bigram"] = {"machine": machine()} | bigram_results(args.data)
    if args.only in (None, "gpt"):
        results["gpt_reference"] = {"machine": machine()} | gpt_results(args.data)
    if args.only in (None, "nanogpt"):
        results["nanogpt_recipe"] = {"machine": machine()} | nanogpt_results(args.data, args.iters)
    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))
    if "nanogpt_recipe" in results:
        side = results["nanogpt_recipe"]
        print(f"\nnanoGPT's CPU recipe ({side['recipe']['max_iters']} iterations):")
        for name in ("nanogpt", *(name for name, _ in OURS if name in side)):
            run = side[name]
            ratio = run["tokens_per_second"] / side["nanogpt"]["tokens_per_second"]
            print(
                f"  {name:<9} {run['precision']:<4} {run['tokens_per_second']:>7,} tokens/s "
                f"({ratio:.2f}x nanoGPT), full-pass val {run['val_loss']:.4f}"
            )


if __name__ == "__main__":
    main()
