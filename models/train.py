"""The offline trainer: corpus in, verified checkpoint folder, log, report and curves out.

Run as `tinygpt train bigram|gpt --data PATH --out DIR` or `python -m models.train ...`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from tqdm import tqdm

from models.bigram import (
    BigramConfig,
    BigramLanguageModel,
    bigram_counts,
    empirical_table,
    table_cross_entropy,
)
from models.checkpoint import (
    Model,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    tensors_to_bytes,
)
from models.data import get_batch, load_corpus, sequential_batches, text_sha256, train_val_split
from models.device import resolve_device
from models.gpt import GPT, GPTConfig
from models.plots import draw_training_pictures
from models.tokenizer import CharTokenizer

LOG_FILE = "train_log.jsonl"
REPORT_FILE = "report.json"
STATE_FILE = "train_state.safetensors"
STATE_META_FILE = "train_state.json"
PROBE_BATCH = 8


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainConfig:
    model: str  # "bigram" or "gpt"
    data: str
    out: str
    max_steps: int = 2000
    batch_size: int = 12
    block_size: int = 64
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_iters: int = 50
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0
    seed: int = 1337
    device: str = "auto"
    # bigram
    init: str = "zeros"
    laplace: float = 0.0  # pseudo-counts per table cell, as a prior in the objective
    # gpt
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    scale_embeddings: bool = False


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs to continue identically."""

    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build(cfg: TrainConfig, vocab_size: int, train_ids: torch.Tensor) -> Model:
    if cfg.model == "bigram":
        model = BigramLanguageModel(BigramConfig(vocab_size=vocab_size, init=cfg.init))
        model.init_weights(train_ids)
        return model
    if cfg.model == "gpt":
        return GPT(
            GPTConfig(
                vocab_size=vocab_size,
                block_size=cfg.block_size,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                n_embd=cfg.n_embd,
                dropout=cfg.dropout,
                bias=cfg.bias,
                scale_embeddings=cfg.scale_embeddings,
            )
        )
    raise TrainingError(f"unknown model {cfg.model!r}; choose bigram or gpt")


def make_optimizer(model: Model, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: biases, LayerNorm gains and 1-D tensors keep their scale.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99))


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def full_pass_loss(
    model: Model, ids: torch.Tensor, block_size: int, batch_size: int = 64
) -> tuple[float, int]:
    """Mean cross-entropy over every target of `ids`, in order: deterministic, no sampling."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in sequential_batches(ids, block_size, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count, count


@torch.no_grad()
def sampled_loss(
    model: Model, data: torch.Tensor, cfg: TrainConfig, seed: int, device: torch.device
) -> float:
    """Mean loss over `eval_iters` random batches, drawn from a generator seeded per call."""
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(cfg.eval_iters):
        x, y = get_batch(data, cfg.block_size, cfg.batch_size, generator)
        with autocast_for(device):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def next_token_distributions(model: Model, probe: torch.Tensor) -> torch.Tensor:
    """What drift is measured on: the bigram's whole table, or the GPT's predictions on a
    fixed probe batch. Returns (N, V) rows that each sum to 1."""
    if isinstance(model, BigramLanguageModel):
        return model.probability_table().float().cpu()
    logits, _ = model(probe)
    return torch.softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1)).cpu()


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        text = load_corpus(cfg.data)
        self.data_sha256 = text_sha256(text)
        self.tokenizer = CharTokenizer.from_text(text)
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        self.train_ids, self.val_ids = train_val_split(ids)
        if len(self.val_ids) < 2:
            raise TrainingError(f"{cfg.data} is too short to hold out a validation split")
        torch.manual_seed(cfg.seed)
        self.model = build(cfg, self.tokenizer.vocab_size, self.train_ids).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)
        probe_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.probe, _ = get_batch(self.val_ids, cfg.block_size, PROBE_BATCH, probe_generator)
        self.probe = self.probe.to(self.device)
        self.previous_distributions: torch.Tensor | None = None
        self.state = TrainState()
        self.counts = bigram_counts(self.train_ids, self.tokenizer.vocab_size)
        self.empirical = empirical_table(self.counts)
        self.bigram_optimum = table_cross_entropy(self.empirical, self.val_ids)
        self.check_output_folder()
        if resume:
            self.load_state()

    # -- output folder -------------------------------------------------------------------
    def check_output_folder(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise TrainingError(
                f"cannot write to output folder {self.out} ({err.strerror}); "
                "choose a writable --out"
            ) from err

    # -- resume state --------------------------------------------------------------------
    def save_state(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim = self.optimizer.state_dict()
        for index, slots in optim["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{index}.{name}"] = value
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = self.batch_generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.previous_distributions is not None:
            tensors["drift.previous"] = self.previous_distributions
        atomic_write_bytes(self.out / STATE_FILE, tensors_to_bytes(tensors))
        meta = {"config": asdict(self.cfg), "state": asdict(self.state)}
        atomic_write_json(self.out / STATE_META_FILE, meta)

    def load_state(self) -> None:
        meta_path, state_path = self.out / STATE_META_FILE, self.out / STATE_FILE
        if not meta_path.is_file() or not state_path.is_file():
            raise TrainingError(f"nothing to resume in {self.out}: no {STATE_META_FILE}")
        meta = json.loads(meta_path.read_text())
        tensors = load_safetensors(state_path.read_bytes())
        model_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_weights(self.model, model_tensors)
        optim = self.optimizer.state_dict()
        optim["state"] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(optim)
        torch.set_rng_state(tensors["rng.torch"])
        self.batch_generator.set_state(tensors["rng.batches"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.previous_distributions = tensors.get("drift.previous")
        self.state = TrainState(**meta["state"])
        # Evaluations logged after the saved state will be logged again as the run repeats them.
        log = self.out / LOG_FILE
        if log.is_file():
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= self.state.step]
            atomic_write_bytes(log, "".join(ln + "\n" for ln in kept).encode())

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, lr: float) -> dict[str, Any]:
        cfg, step = self.cfg, self.state.step
        self.model.eval()
        record: dict[str, Any] = {
            "step": step,
            "train_loss": sampled_loss(self.model, self.train_ids, cfg, cfg.seed, self.device),
            "val_loss": sampled_loss(self.model, self.val_ids, cfg, cfg.seed + 1, self.device),
            "lr": lr,
            "tokens_seen": self.state.tokens_seen,
        }
        record["gap"] = record["val_loss"] - record["train_loss"]
        distributions = next_token_distributions(self.model, self.probe)
        if self.previous_distributions is not None:
            l1 = (distributions - self.previous_distributions).abs().sum(dim=-1)
            record["drift"] = l1.mean().item()
        self.previous_distributions = distributions
        if isinstance(self.model, BigramLanguageModel):
            record["table_mae"] = (distributions - self.empirical).abs().mean().item()
            record["bigram_optimum"] = self.bigram_optimum
        self.model.train()
        return record

    def write_log(self, record: dict[str, Any]) -> None:
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def after_evaluation(self, record: dict[str, Any]) -> None:
        """Keep the best checkpoint, and watch for a plateau."""
        state = self.state
        if record["val_loss"] < state.best_val - self.cfg.min_delta:
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        if record["val_loss"] < state.best_val:
            state.best_val, state.best_step = record["val_loss"], state.step
            self.save_checkpoint(self.model, state.step, {"val_loss_sampled": record["val_loss"]})
        patience = self.cfg.patience
        if patience and state.evals_without_improvement >= patience:
            state.stopped_early = True

    def save_checkpoint(self, model: Model, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "data_sha256": self.data_sha256,
            "training": asdict(self.cfg),
        }
        if isinstance(model, BigramLanguageModel):
            extra["bigram_counts"] = self.counts.tolist()
        metrics = {"step": step, **metrics}
        return save_checkpoint(self.out, model, self.tokenizer, metrics, extra)

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        resumed_at = state.step if state.history else None
        self.model.train()
        tokens_per_step = cfg.batch_size * min(cfg.block_size, len(self.train_ids) - 1)
        bar = tqdm(
            total=cfg.max_steps,
            initial=state.step,
            desc=f"train {cfg.model}",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        started = time.perf_counter() - state.train_seconds
        while True:
            lr = lr_at(state.step, cfg)
            if (state.step % cfg.eval_interval == 0 or state.step >= cfg.max_steps) and (
                state.step != resumed_at
            ):
                state.train_seconds = time.perf_counter() - started
                record = self.evaluate(lr)
                state.history.append(record)
                self.write_log(record)
                self.after_evaluation(record)
                self.save_state()
                bar.set_postfix(val=f"{record['val_loss']:.4f}", refresh=False)
            if state.step >= cfg.max_steps or state.stopped_early:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(self.train_ids, cfg.block_size, cfg.batch_size, self.batch_generator)
            with autocast_for(self.device):
                _, loss = self.model(x.to(self.device), y.to(self.device))
            objective = loss
            if isinstance(self.model, BigramLanguageModel) and cfg.laplace > 0:
                prior_weight = cfg.laplace / len(self.train_ids)
                objective = loss - prior_weight * self.model.dirichlet_log_prior()
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            state.step += 1
            state.tokens_seen += tokens_per_step
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss.item():.4f}",
                tok_s=f"{state.tokens_seen / elapsed:,.0f}",
                refresh=False,
            )
        bar.close()
        state.train_seconds = time.perf_counter() - started
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Full pass over val with the best checkpoint's weights, then report and curves."""
        best = load_checkpoint(self.out, self.device).model
        val_full, val_tokens = full_pass_loss(best, self.val_ids, self.cfg.block_size)
        last = self.state.history[-1]
        best_record = next(r for r in self.state.history if r["step"] == self.state.best_step)
        report: dict[str, Any] = {
            "model": self.cfg.model,
            "parameters": sum(p.numel() for p in best.parameters()),
            "steps": self.state.step,
            "best_step": self.state.best_step,
            "stopped_early": self.state.stopped_early,
            "val_loss": val_full,
            "val_tokens": val_tokens,
            "val_loss_sampled": best_record["val_loss"],
            "train_loss_sampled": best_record["train_loss"],
            "train_val_gap": best_record["gap"],
            "last_drift": last.get("drift"),
            "tokens_seen": self.state.tokens_seen,
            "train_seconds": round(self.state.train_seconds, 1),
            "tokens_per_second": round(
                self.state.tokens_seen / max(self.state.train_seconds, 1e-9)
            ),
            "device": str(self.device),
            "torch_version": torch.__version__,
            "data_sha256": self.data_sha256,
            "config": asdict(self.cfg),
        }
        if isinstance(best, BigramLanguageModel):
            table = best.probability_table().float().cpu()
            report["table_mae"] = (table - self.empirical).abs().mean().item()
            report["bigram_optimum_val_loss"] = self.bigram_optimum
            report["gap_to_optimum"] = val_full - self.bigram_optimum
        metrics = {
            k: report[k]
            for k in ("val_loss", "val_loss_sampled", "train_loss_sampled", "train_val_gap")
        }
        for key in ("table_mae", "bigram_optimum_val_loss"):
            if key in report:
                metrics[key] = report[key]
        metrics["train_seconds"] = report["train_seconds"]
        self.save_checkpoint(best, self.state.best_step, metrics)
        atomic_write_json(self.out / REPORT_FILE, report)
        draw_training_pictures(self.out)
        return report


def config_from_args(args: Any) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def resumed_config(out: str, overrides: dict[str, Any]) -> TrainConfig:
    """A resumed run takes its settings from the saved state; only the device may change."""
    meta_path = Path(out) / STATE_META_FILE
    if not meta_path.is_file():
        raise TrainingError(f"nothing to resume in {out}: no {STATE_META_FILE}")
    saved = json.loads(meta_path.read_text())["config"]
    if overrides.get("device"):
        saved["device"] = overrides["device"]
    return TrainConfig(**saved)


def main(argv: list[str] | None = None) -> int:
    from models.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
