"""The training loop: a corpus in; a verified checkpoint folder, log, report and curves out.

`tinygpt train bigram|gpt --data PATH --out DIR` (or `--dataset DATASET`, prepared by
`tinygpt prepare`; `--data` prepares into a cache, see models.dataset) runs it, and so does
`python -m models.train ...`, unchanged under `torchrun --nproc_per_node N` for distributed
data-parallel training: each process trains a replica on its own micro-batches, gradients are
averaged across processes, and rank 0 alone writes files.

The loop knows no particular model. What one adds comes from methods that every model class
has: `for_training` builds it, `training_objective` adds terms to the loss,
`next_token_distributions` is what drift is measured on, `training_diagnostics` and
`final_diagnostics` add to the log and the report, `manifest_extras` to the checkpoint,
`timeline_snapshot` is what the training timeline (models.timeline) records.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.bigram import BigramLanguageModel
from models.checkpoint import Model, atomic_write_json, load_checkpoint, save_checkpoint
from models.config import TrainConfig, TrainingError
from models.data import TrainingData, get_batch
from models.dataset import Dataset, cached_dataset, open_dataset
from models.device import autocast_for, resolve_device, resolve_precision
from models.distributed import (
    DistEnv,
    all_sum,
    broadcast_from_main,
    gather_from_all,
    join_process_group,
    leave_process_group,
)
from models.evaluation import drift, full_pass_loss, sampled_loss
from models.gpt import GPT
from models.interop import INSTALL_HINT
from models.plots import draw_training_pictures
from models.resume import (
    SavedState,
    TrainState,
    drop_log_records_after,
    process_rng_states,
    read_state,
    restore_state,
    save_state,
)
from models.timeline import new_timeline, resumed_timeline, save_timeline

if TYPE_CHECKING:
    from models.interop.tensorboard import TensorBoardLog

MODEL_CLASSES: dict[str, type[BigramLanguageModel] | type[GPT]] = {
    "bigram": BigramLanguageModel,
    "gpt": GPT,
}
LOG_FILE = "train_log.jsonl"
REPORT_FILE = "report.json"
PROBE_BATCH = 8


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak at `max_steps`."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: Model, cfg: TrainConfig) -> torch.optim.AdamW:
    # Decay matrices only: biases, LayerNorm gains and 1-D tensors keep their scale.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused: one kernel over each tensor instead of a dozen passes, which for a bigram's V x V
    # table at V = 4,096 is the difference between 0.02 s and 0.2 s a step on a CPU.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), fused=True)


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
        self.precision = resolve_precision(cfg.precision, self.device)  # "fp32" or "bf16"
        try:
            self.prepare(resume)
        except BaseException:
            leave_process_group()
            raise

    def prepare(self, resume: bool) -> None:
        cfg = self.cfg
        saved = read_state(self.out) if resume else None
        dataset = self.open_data(saved)
        self.data_sha256 = dataset.text_sha256
        self.tokenizer = dataset.tokenizer
        # The token files stay on disk (models.data.TokenFile): batches read only their windows.
        self.train_ids, self.val_ids = dataset.train, dataset.val
        val_read = cfg.val_tokens or len(self.val_ids)  # by the final pass and diagnostics
        self.data = TrainingData(self.train_ids, self.val_ids[:val_read])
        # Rank 0 draws the single-process initialisation, which DDP copies to the other ranks;
        # their own seeds give each rank different dropout masks.
        torch.manual_seed(cfg.seed + self.dist.rank)
        model_class = MODEL_CLASSES[cfg.model]
        self.model = model_class.for_training(cfg, self.tokenizer.vocab_size, self.data)
        self.model.to(self.device)
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
        # Rank 0 alone records the timeline, as it alone writes files.
        self.timeline = new_timeline(self.model, cfg.eval_interval) if self.dist.is_main else None
        if self.dist.is_main:
            self.check_output_folder()
        self.tensorboard = self.open_tensorboard()
        if saved:
            self.resume_from(saved)

    def open_tensorboard(self) -> TensorBoardLog | None:
        """The writer of `--tensorboard DIR`, on rank 0 only, which alone writes files."""
        if self.cfg.tensorboard is None or not self.dist.is_main:
            return None
        try:  # torch.utils.tensorboard needs the tensorboard package, an optional extra
            from models.interop.tensorboard import TensorBoardLog
        except ImportError as err:
            raise TrainingError(f"--tensorboard needs TensorBoard ({err}): {INSTALL_HINT}") from err
        return TensorBoardLog(self.cfg.tensorboard, self.tokenizer)

    def open_data(self, saved: SavedState | None) -> Dataset:
        """The `--dataset`, or the cached dataset of `--data`, which rank 0 prepares on a
        cache miss while the others wait for it. A resumed run must find its vocabulary."""
        cfg = self.cfg
        if cfg.dataset is not None:
            dataset = open_dataset(cfg.dataset)
            # The dataset's tokenizer is the run's: the settings, and so the checkpoint, say so.
            cfg.tokenizer = dataset.tokenizer.kind
            cfg.vocab_size = dataset.tokenizer.vocab_size if cfg.tokenizer == "bpe" else None
        else:
            assert cfg.data is not None  # TrainConfig holds one of the two
            folder = None
            if self.dist.is_main:
                folder = str(cached_dataset(cfg.data, cfg.tokenizer, cfg.vocab_size, True).path)
            dataset = open_dataset(broadcast_from_main(folder), verify=self.dist.is_main)
        saved_tokenizer = saved.tokenizer() if saved else None
        if saved_tokenizer is not None and saved_tokenizer.to_dict() != dataset.tokenizer.to_dict():
            raise TrainingError(
                f"{dataset.path} does not hold the vocabulary the run in {self.out} was trained "
                "with; resume it on the data it started on"
            )
        return dataset

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
        rng_states_by_rank = gather_from_all(process_rng_states(self.device))  # a collective
        if not self.dist.is_main:
            return
        save_state(
            self.out,
            cfg=self.cfg,
            state=self.state,
            tokenizer=self.tokenizer,
            model=self.model,
            optimizer=self.optimizer,
            rng_states_by_rank=rng_states_by_rank,
            batch_generators=self.batch_generators,
            previous_distributions=self.previous_distributions,
        )

    def resume_from(self, saved: SavedState) -> None:
        self.state, self.previous_distributions = restore_state(
            saved,
            model=self.model,
            optimizer=self.optimizer,
            batch_generators=self.batch_generators,
            rank=self.dist.rank,
            device=self.device,
        )
        if self.dist.is_main:
            drop_log_records_after(self.out / LOG_FILE, self.state.step)
            # A run saved by a version without timelines starts one from here.
            self.timeline = resumed_timeline(self.out, self.state.step) or self.timeline

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, lr: float) -> dict[str, Any]:
        cfg, step, dist_env = self.cfg, self.state.step, self.dist
        self.model.eval()
        record: dict[str, Any] = {
            "step": step,
            "train_loss": sampled_loss(
                self.model, self.train_ids, cfg, cfg.seed, self.device, self.precision, dist_env
            ),
            "val_loss": sampled_loss(
                self.model, self.val_ids, cfg, cfg.seed + 1, self.device, self.precision, dist_env
            ),
            "lr": lr,
            "tokens_seen": self.state.tokens_seen,
            # what these losses and the steps since the last evaluation ran in (a resumed run
            # may change it)
            "precision": self.precision,
        }
        record["gap"] = record["val_loss"] - record["train_loss"]
        if dist_env.is_main:  # the diagnostics below are only ever logged
            distributions = self.model.next_token_distributions(self.probe)
            if self.previous_distributions is not None:
                record["drift"] = drift(self.previous_distributions, distributions)
            self.previous_distributions = distributions
            record.update(self.model.training_diagnostics(self.data))
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

    def record_timeline(self, record: dict[str, Any]) -> None:
        """Snapshot the token vectors into the timeline and write it (rank 0), before the
        resume state: a kill between the two leaves a snapshot that the resumed run drops."""
        if self.timeline is None:
            return
        self.timeline.record(self.model, self.data, record, self.state.best_step)
        save_timeline(self.out, self.timeline)

    def save_checkpoint(self, model: Model, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        extra = {
            "data_sha256": self.data_sha256,
            "training": asdict(self.cfg),
            **model.manifest_extras(self.data),
        }
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
            # The DDP wrapper holds the process group: dropped here, its gloo threads stop now,
            # not while the interpreter is torn down (which can abort the process).
            self.ddp = None
            gc.collect()
            leave_process_group()
            if self.tensorboard is not None:
                self.tensorboard.close()

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
            desc=f"train {cfg.model} ({self.device.type}, {self.precision})",
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
                if self.tensorboard is not None:
                    tokens_per_second = state.tokens_seen / max(state.train_seconds, 1e-9)
                    self.tensorboard.evaluation(
                        record, tokens_per_second, self.model.token_vectors()
                    )
                self.after_evaluation(record)
                self.record_timeline(record)
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
                with autocast_for(self.device, self.precision):
                    _, loss = train_model(x.to(self.device), y.to(self.device))
                objective = self.model.training_objective(loss, cfg, len(self.train_ids))
                (objective / self.local_accum).backward()
            total += loss.item()
        return all_sum(total, self.device) / cfg.grad_accum_steps

    def finish(self) -> dict[str, Any]:
        """Full pass over val (its first `val_tokens`) with the best checkpoint's weights, then
        report and curves."""
        best = load_checkpoint(self.out, self.device).model
        val_full, val_tokens = full_pass_loss(best, self.data.val, self.cfg.block_size)
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
            "precision": self.precision,  # the one used: cfg.precision may be `auto`
            "processes": self.dist.world_size,
            "torch_version": torch.__version__,
            "data_sha256": self.data_sha256,
            "tokenizer": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
            "config": asdict(self.cfg),
        }
        model_metrics, report_only = best.final_diagnostics(self.data, val_full)
        report.update(model_metrics)
        report.update(report_only)
        metrics = {
            **{
                k: report[k]
                for k in ("val_loss", "val_loss_sampled", "train_loss_sampled", "train_val_gap")
            },
            **model_metrics,
            "train_seconds": report["train_seconds"],
            "precision": self.precision,
        }
        self.save_checkpoint(best, self.state.best_step, metrics)
        atomic_write_json(self.out / REPORT_FILE, report)
        draw_training_pictures(self.out)
        return report


if __name__ == "__main__":
    # Run as a program, this file is the module `__main__`; models.cli, which imports the
    # trainer as `models.train`, then closes no import cycle.
    from models.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
