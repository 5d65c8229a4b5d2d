"""Training pictures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(
    history: list[dict[str, Any]], path: Path, optimum: float | None = None
) -> None:
    """Train and val loss against step; for the bigram, the count-based optimum as a line."""
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in history], label="train")
    ax.plot(steps, [r["val_loss"] for r in history], label="val")
    if optimum is not None:
        ax.axhline(
            optimum, color="grey", linestyle="--", label=f"count-based optimum {optimum:.4f}"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
