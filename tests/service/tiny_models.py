"""Tiny trained checkpoints for the service tests: one bigram and one GPT in one folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.checkpoint import MANIFEST_FILE
from models.config import TrainConfig
from models.train import Trainer

BIGRAM_ID = "bigram-tiny"
GPT_ID = "gpt-tiny"
GPT_BLOCK_SIZE = 16


def tiny_checkpoint_folder(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """Train both models once per test session; later calls reuse the folder."""
    root = tmp_path_factory.getbasetemp() / "tiny-checkpoints"
    common = dict(data=str(corpus), max_steps=30, batch_size=8, eval_interval=10, eval_iters=2)
    configs = {
        BIGRAM_ID: TrainConfig(
            model="bigram", out=str(root / BIGRAM_ID), block_size=32, learning_rate=0.1,
            warmup_steps=0, device="cpu", **common,
        ),
        GPT_ID: TrainConfig(
            model="gpt", out=str(root / GPT_ID), block_size=GPT_BLOCK_SIZE, n_layer=1, n_head=2,
            n_embd=32, device="cpu", **common,
        ),
    }  # fmt: skip
    for model_id, config in configs.items():
        if not (root / model_id / MANIFEST_FILE).is_file():
            Trainer(config).train()
    return root
