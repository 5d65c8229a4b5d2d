"""The offline trainer: corpus in, verified checkpoint folder, log, report and curves out.

Run as `tinygpt train bigram|gpt --data PATH --out DIR` or `python -m models.train ...`, and
unchanged under `torchrun --nproc_per_node N` for distributed data-parallel training: each
process trains a replica on its own micro-batches, gradients are averaged across processes, and
rank 0 alone writes files.
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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.bigram import (
    BigramConfig,
    BigramInit,
    BigramLanguageModel,
    bigram_counts,
    empirical_table,
    table_cross_entropy,
)
from models.checkpoint import (
    Model,
    atomic_write_bytes,
    atomic_write_json,
    header_metadata,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    tensors_to_bytes,
)
from models.data import (
    TRAIN_FRACTION,
    get_batch,
    load_corpus,
    sequential_batches,
    text_sha256,
    train_val_split,
)
from models.device import resolve_device
from models.distributed import (
    SINGLE_PROCESS,
    DistEnv,
    all_sum,
    broadcast_from_main,
    gather_from_all,
    join_process_group,
    leave_process_group,
)
from models.gpt import GPT, GPTConfig
from models.plots import draw_training_pictures
from models.tokenizer import (
    MIN_BPE_VOCAB,
    BPETokenizer,
    CharTokenizer,
    TextTokenizer,
    tokenizer_from_dict,
)

LOG_FILE = "train_log.jsonl"
REPORT_FILE = "report.json"
STATE_FILE = "train_state.safetensors"
STATE_META_KEY = "train_state"  # the state file's header entry holding config and counters
PROBE_BATCH = 8
DEFAULT_BPE_VOCAB = 2048
# The bigram's counts go into the manifest as JSON, V^2 numbers: fine for characters, but for a
# 2048-token BPE vocabulary they would make every checkpoint write tens of megabytes of text.
MAX_VOCAB_FOR_STORED_COUNTS = 512


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
    # Micro-batches per optimizer step, summed over all processes: the global batch is
    # batch_size * grad_accum_steps sequences whatever the number of processes, each of which
    # accumulates grad_accum_steps / world_size of them.
    grad_accum_steps: int = 1
    tokenizer: str = "char"  # "char" or "bpe"
    vocab_size: int | None = None  # bpe only: DEFAULT_BPE_VOCAB when not given
    # bigram
    init: BigramInit = "zeros"
    laplace: float = 0.0  # pseudo-counts per table cell, as a prior in the objective
    # gpt
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    scale_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.tokenizer not in ("char", "bpe"):
            raise TrainingError(f"unknown tokenizer {self.tokenizer!r}; choose char or bpe")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            self.vocab_size = DEFAULT_BPE_VOCAB
        if self.tokenizer == "char" and self.vocab_size is not None:
            raise TrainingError("--vocab-size applies to --tokenizer bpe only")
        if self.tokenizer == "bpe" and (self.vocab_size or 0) < MIN_BPE_VOCAB:
            raise TrainingError(
                f"--vocab-size {self.vocab_size} is too small: a byte-level BPE vocabulary "
                f"holds the {MIN_BPE_VOCAB} bytes plus the merges it learns"
            )
        if self.grad_accum_steps < 1:
            raise TrainingError("--grad-accum-steps must be at least 1")


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
    model: Model,
    data: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    dist_env: DistEnv = SINGLE_PROCESS,
) -> float:
    """Mean loss over `eval_iters` random batches, drawn from a generator seeded per call.

    Under DDP every rank draws the same batches and evaluates its share (batch i on rank
    i mod N); the all-reduced sum gives every rank the number a single process would get."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(cfg.eval_iters):
        x, y = get_batch(data, cfg.block_size, cfg.batch_size, generator)
        if i % dist_env.world_size == dist_env.rank:
            with autocast_for(device):
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
    return all_sum(total, device) / cfg.eval_iters


@torch.no_grad()
def next_token_distributions(model: Model, probe: torch.Tensor) -> torch.Tensor:
    """What drift is measured on: the bigram's whole table, or the GPT's predictions on a
    fixed probe batch. Returns (N, V) rows that each sum to 1."""
    if isinstance(model, BigramLanguageModel):
        return model.probability_table().float().cpu()
    logits, _ = model(probe)
    return torch.softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1)).cpu()


def bpe_for_training_split(text: str, vocab_size: int) -> BPETokenizer:
    """A BPE tokenizer that never saw the validation text.

    The split is by tokens (the first 90% train), as `tinygpt eval --split` makes it, so where
    validation starts in the text depends on the tokenizer. Learn the merges on the first 90%
    of the characters: a tokenizer compresses its own training text best, so the token split
    then lands at or after that point. Should it land earlier, learn again on the text before
    it, until the validation tokens lie wholly in text the merges were not learned from.
    """
    seen = int(TRAIN_FRACTION * len(text))
    while True:
        tokenizer = BPETokenizer.train(text[:seen], vocab_size)
        encoding = tokenizer.hf.encode(text)
        n_train = int(TRAIN_FRACTION * len(encoding.ids))  # as train_val_split cuts
        val_start = encoding.offsets[n_train][0]  # character offset of the first val token
        if val_start >= seen:
            return tokenizer
        seen = val_start


def rng_key(name: str, index: int) -> str:
    """Key of generator `index` in the resume state; index 0 keeps the single-process name."""
    return f"rng.{name}" if index == 0 else f"rng.{name}.{index}"


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = DistEnv.from_environment()
        if cfg.grad_accum_steps % self.dist.world_size:
            raise TrainingError(
                f"--grad-accum-steps {cfg.grad_accum_steps} (micro-batches per step, summed "
                f"over all processes) must be a multiple of the {self.dist.world_size} "
                "processes, which share them; e.g. --grad-accum-steps "
                f"{self.dist.world_size} for a global batch of {self.dist.world_size} x "
                "--batch-size sequences"
            )
        self.local_accum = cfg.grad_accum_steps // self.dist.world_size
        self.device = join_process_group(self.dist, resolve_device(cfg.device))
        try:
            self.prepare(resume)
        except BaseException:
            leave_process_group()
            raise

    def prepare(self, resume: bool) -> None:
        cfg = self.cfg
        text = load_corpus(cfg.data)
        self.data_sha256 = text_sha256(text)
        saved = self.read_state() if resume else None
        self.tokenizer = self.make_tokenizer(text, saved[0] if saved else None)
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        self.train_ids, self.val_ids = train_val_split(ids)
        if len(self.val_ids) < 2:
            raise TrainingError(f"{cfg.data} is too short to hold out a validation split")
        # Rank 0 draws the single-process initialisation, which DDP copies to the other ranks;
        # their own seeds give each rank different dropout masks.
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = build(cfg, self.tokenizer.vocab_size, self.train_ids).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        # One batch stream per micro-batch slot of a step, seeded seed + slot. Rank r trains on
        # slots r * local_accum ... (r + 1) * local_accum - 1, so a step sees the same batches
        # whatever the number of processes. Every rank advances every stream (drawing a batch
        # costs next to nothing), so rank 0 can save them all for an exact resume.
        self.batch_generators = [
            torch.Generator().manual_seed(cfg.seed + slot) for slot in range(cfg.grad_accum_steps)
        ]
        first_slot = self.dist.rank * self.local_accum
        self.own_slots = range(first_slot, first_slot + self.local_accum)
        probe_generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.probe, _ = get_batch(self.val_ids, cfg.block_size, PROBE_BATCH, probe_generator)
        self.probe = self.probe.to(self.device)
        self.previous_distributions: torch.Tensor | None = None
        self.state = TrainState()
        if cfg.model == "bigram":
            self.counts = bigram_counts(self.train_ids, self.tokenizer.vocab_size)
            self.empirical = empirical_table(self.counts)
            self.bigram_optimum = table_cross_entropy(self.empirical, self.val_ids)
        if self.dist.is_main:
            self.check_output_folder()
        if saved:
            self.load_state(*saved)

    def make_tokenizer(self, text: str, meta: dict[str, Any] | None) -> TextTokenizer:
        if meta is not None and "tokenizer" in meta:
            # A resumed run keeps its vocabulary (states written before BPE support hold no
            # tokenizer; they were char, which the text determines).
            return tokenizer_from_dict(meta["tokenizer"])
        if self.cfg.tokenizer == "char":
            return CharTokenizer.from_text(text)
        # Every rank must hold the same vocabulary: rank 0 learns it, the others receive it.
        learned = None
        if self.dist.is_main:
            assert self.cfg.vocab_size is not None  # TrainConfig sets it for bpe
            learned = bpe_for_training_split(text, self.cfg.vocab_size).to_dict()
        return tokenizer_from_dict(broadcast_from_main(learned))

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
    def rng_states(self) -> dict[str, torch.Tensor]:
        """This process's global generators: they draw dropout masks and differ per rank."""
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    def save_state(self) -> None:
        per_rank = gather_from_all(self.rng_states())  # a collective: every rank takes part
        if not self.dist.is_main:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim = self.optimizer.state_dict()
        for index, slots in optim["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{index}.{name}"] = value
        for rank, states in enumerate(per_rank):
            for name, value in states.items():
                tensors[rng_key(name, rank)] = value
        for slot, generator in enumerate(self.batch_generators):
            tensors[rng_key("batches", slot)] = generator.get_state()
        if self.previous_distributions is not None:
            tensors["drift.previous"] = self.previous_distributions
        meta = {
            "config": asdict(self.cfg),
            "state": asdict(self.state),
            "tokenizer": self.tokenizer.to_dict(),
        }
        # One file for tensors and step counters alike: a kill can never pair one evaluation's
        # weights with another's counters.
        state = tensors_to_bytes(tensors, {STATE_META_KEY: json.dumps(meta)})
        atomic_write_bytes(self.out / STATE_FILE, state)

    def read_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The saved state; every rank reads it, so under torchrun on several machines --out
        must be on a filesystem they share."""
        data = read_state_file(self.out)
        return json.loads(header_metadata(data)[STATE_META_KEY]), load_safetensors(data)

    def load_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        model_tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_weights(self.model, model_tensors)
        optim = self.optimizer.state_dict()
        optim["state"] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(optim)
        # A rank the saved run did not have (it ran on fewer processes) keeps its fresh seed:
        # its dropout masks then differ from an uninterrupted run's, its batches do not.
        if rng_key("torch", self.dist.rank) in tensors:
            torch.set_rng_state(tensors[rng_key("torch", self.dist.rank)])
        if rng_key("cuda", self.dist.rank) in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[rng_key("cuda", self.dist.rank)], self.device)
        for slot, generator in enumerate(self.batch_generators):
            generator.set_state(tensors[rng_key("batches", slot)])
        self.previous_distributions = tensors.get("drift.previous")
        self.state = TrainState(**meta["state"])
        # Evaluations logged after the saved state will be logged again as the run repeats them.
        log = self.out / LOG_FILE
        if self.dist.is_main and log.is_file():
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln)["step"] <= self.state.step]
            atomic_write_bytes(log, "".join(ln + "\n" for ln in kept).encode())

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, lr: float) -> dict[str, Any]:
        cfg, step, dist_env = self.cfg, self.state.step, self.dist
        self.model.eval()
        record: dict[str, Any] = {
            "step": step,
            "train_loss": sampled_loss(
                self.model, self.train_ids, cfg, cfg.seed, self.device, dist_env
            ),
            "val_loss": sampled_loss(
                self.model, self.val_ids, cfg, cfg.seed + 1, self.device, dist_env
            ),
            "lr": lr,
            "tokens_seen": self.state.tokens_seen,
        }
        record["gap"] = record["val_loss"] - record["train_loss"]
        if dist_env.is_main:  # the diagnostics below are only ever logged
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
            if self.dist.is_main:
                metrics = {"val_loss_sampled": record["val_loss"]}
                self.save_checkpoint(self.model, state.step, metrics)
        patience = self.cfg.patience
        if patience and state.evals_without_improvement >= patience:
            state.stopped_early = True
        # The all-reduced losses agree on every rank, and so should this; rank 0's decides.
        state.stopped_early = broadcast_from_main(state.stopped_early)

    def save_checkpoint(self, model: Model, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "data_sha256": self.data_sha256,
            "training": asdict(self.cfg),
        }
        if isinstance(model, BigramLanguageModel) and (
            model.config.vocab_size <= MAX_VOCAB_FOR_STORED_COUNTS
        ):
            extra["bigram_counts"] = self.counts.tolist()
        metrics = {"step": step, **metrics}
        return save_checkpoint(self.out, model, self.tokenizer, metrics, extra)

    # -- the loop ------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to `max_steps` (or a plateau); every rank returns rank 0's report."""
        try:
            self.loop()
            report = self.finish() if self.dist.is_main else None
            return broadcast_from_main(report)
        finally:
            leave_process_group()

    def loop(self) -> None:
        cfg, state = self.cfg, self.state
        resumed_at = state.step if state.history else None
        self.model.train()
        tokens_per_step = (
            cfg.batch_size * min(cfg.block_size, len(self.train_ids) - 1) * cfg.grad_accum_steps
        )
        bar = tqdm(
            total=cfg.max_steps,
            initial=state.step,
            desc=f"train {cfg.model}",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
            disable=not self.dist.is_main,
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
                if self.dist.is_main:
                    self.write_log(record)
                self.after_evaluation(record)
                self.save_state()
                bar.set_postfix(val=f"{record['val_loss']:.4f}", refresh=False)
            if state.step >= cfg.max_steps or state.stopped_early:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self.accumulate_gradients()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            state.step += 1
            state.tokens_seen += tokens_per_step
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.4f}",
                tok_s=f"{state.tokens_seen / elapsed:,.0f}",
                refresh=False,
            )
        bar.close()
        state.train_seconds = time.perf_counter() - started

    def accumulate_gradients(self) -> float:
        """Backpropagate this rank's micro-batches of the step; returns the step's mean loss
        over all ranks. DDP averages gradients across ranks on the last backward only."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        train_model = self.model if self.ddp is None else self.ddp
        total = 0.0
        for slot, generator in enumerate(self.batch_generators):
            x, y = get_batch(self.train_ids, cfg.block_size, cfg.batch_size, generator)
            if slot not in self.own_slots:
                continue
            last = slot == self.own_slots[-1]
            sync = contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                with autocast_for(self.device):
                    _, loss = train_model(x.to(self.device), y.to(self.device))
                objective = loss
                if isinstance(self.model, BigramLanguageModel) and cfg.laplace > 0:
                    prior_weight = cfg.laplace / len(self.train_ids)
                    objective = loss - prior_weight * self.model.dirichlet_log_prior()
                (objective / self.local_accum).backward()
            total += loss.item()
        return all_sum(total, self.device) / cfg.grad_accum_steps

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
            "processes": self.dist.world_size,
            "torch_version": torch.__version__,
            "data_sha256": self.data_sha256,
            "tokenizer": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
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


def read_state_file(out: str | Path) -> bytes:
    try:
        return (Path(out) / STATE_FILE).read_bytes()
    except FileNotFoundError:
        raise TrainingError(f"nothing to resume in {out}: no {STATE_FILE}") from None


def saved_state_meta(out: str | Path) -> dict[str, Any]:
    """The settings, counters and tokenizer saved with the last resume state in `out`."""
    return json.loads(header_metadata(read_state_file(out))[STATE_META_KEY])


def resumed_config(out: str, overrides: dict[str, Any]) -> TrainConfig:
    """A resumed run takes its settings from the saved state; only the device may change."""
    saved = saved_state_meta(out)["config"]
    if overrides.get("device"):
        saved["device"] = overrides["device"]
    return TrainConfig(**saved)


def main(argv: list[str] | None = None) -> int:
    from models.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
