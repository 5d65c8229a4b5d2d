"""Training pictures, drawn with matplotlib's Agg backend (no display needed).

Everything is drawn from what a run leaves in its folder (the JSONL log, and the manifest
and weights of the checkpoint), so `tinygpt plot DIR` can redraw them at any time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LOSS_CURVE_FILE = "loss_curve.png"
DRIFT_CURVE_FILE = "drift_curve.png"
HEATMAP_FILE = "bigram_heatmaps.png"


def save_figure(fig: Figure, path: Path) -> None:
    """Write the picture atomically so a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_loss_curves(
    history: list[dict[str, Any]], path: Path, optimum: float | None = None
) -> None:
    """Train and val loss against step; for the bigram, the count-based optimum as a line."""
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in history], label="train")
    ax.plot(steps, [r["val_loss"] for r in history], label="val")
    if optimum is not None:
        label = f"count-based optimum {optimum:.4f}"
        ax.axhline(optimum, color="grey", linestyle="--", label=label)
        # The interesting part is the approach to the optimum, not the first step's drop.
        top = (
            max(r["val_loss"] for r in history[1:]) if len(history) > 1 else history[0]["val_loss"]
        )
        ax.set_ylim(optimum - 0.05, max(optimum + 0.1, top + 0.02))
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_drift(history: list[dict[str, Any]], path: Path) -> None:
    """Mean L1 distance between successive next-token distributions: zero means converged."""
    points = [(r["step"], r["drift"]) for r in history if r.get("drift") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean L1 between successive evaluations")
    ax.set_title("drift of the next-token distributions")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def plot_bigram_heatmaps(
    learned: torch.Tensor, empirical: torch.Tensor, labels: list[str], path: Path
) -> None:
    """P(next | current) as learned beside the same table counted from the data."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2), dpi=100, layout="constrained")
    vmax = float(max(learned.max(), empirical.max()))
    ticks = range(len(labels))
    shown = [repr(c)[1:-1] for c in labels]
    for ax, table, title in ((axes[0], learned, "learned"), (axes[1], empirical, "empirical")):
        image = ax.imshow(table.numpy(), cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(f"{title} P(next | current)")
        ax.set_xlabel("next token")
        ax.set_ylabel("current token")
        if len(labels) <= 96:
            ax.set_xticks(ticks, shown, fontsize=5, rotation=90)
            ax.set_yticks(ticks, shown, fontsize=5)
    fig.colorbar(image, ax=axes, shrink=0.7)
    save_figure(fig, path)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{run_dir} has no train_log.jsonl; is it a training folder?")
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def draw_training_pictures(run_dir: str | Path) -> list[Path]:
    """Draw every picture a training folder supports; returns the files written."""
    from models.bigram import BigramLanguageModel, empirical_table
    from models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    history = read_history(run_dir)
    optimum = history[-1].get("bigram_optimum")
    written = [run_dir / LOSS_CURVE_FILE, run_dir / DRIFT_CURVE_FILE]
    plot_loss_curves(history, written[0], optimum)
    plot_drift(history, written[1])
    if (run_dir / "manifest.json").is_file():
        checkpoint = load_checkpoint(run_dir)
        model = checkpoint.model
        if isinstance(model, BigramLanguageModel) and "bigram_counts" in checkpoint.manifest:
            with torch.no_grad():
                learned = model.probability_table().float()
            empirical = empirical_table(torch.tensor(checkpoint.manifest["bigram_counts"]))
            labels = [checkpoint.tokenizer.token_text(i) for i in range(len(learned))]
            written.append(run_dir / HEATMAP_FILE)
            plot_bigram_heatmaps(learned, empirical, labels, written[-1])
    return written
