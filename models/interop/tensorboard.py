"""`tinygpt train --tensorboard DIR`: the training log as TensorBoard event files.

Each evaluation's numbers become scalars (losses, learning rate, drift, the bigram's table
error, tokens/s), and the token-embedding table an embedding for TensorBoard's projector,
labelled with the tokens escaped as word2vec keys are (the projector's metadata is a TSV
file, where a raw tab or newline would break a row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from models.interop.tokens import escape_token, token_bytes
from models.tokenizer import TextTokenizer

# TensorBoard groups tags by their prefix; a number a model adds to the record (its
# `training_diagnostics`) goes under diagnostics/ with its own name.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "gap": "loss/val_minus_train",
    "lr": "optimizer/lr",
    "tokens_seen": "throughput/tokens_seen",
}
TOKENS_PER_SECOND_TAG = "throughput/tokens_per_second"
EMBEDDING_TAG = "token_embeddings"


class TensorBoardLog:
    def __init__(self, folder: str | Path, tokenizer: TextTokenizer):
        self.writer = SummaryWriter(log_dir=str(folder))
        self.labels = [escape_token(token_bytes(tokenizer, i)) for i in range(tokenizer.vocab_size)]

    def evaluation(
        self, record: dict[str, Any], tokens_per_second: float, token_vectors: torch.Tensor
    ) -> None:
        """One evaluation: its record (the JSONL log's line), the training speed so far (not
        in the record, which a resumed run reproduces exactly), the model's token vectors."""
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(
                    SCALAR_TAGS.get(key, f"diagnostics/{key}"), value, global_step=step
                )
        self.writer.add_scalar(TOKENS_PER_SECOND_TAG, tokens_per_second, global_step=step)
        self.writer.add_embedding(
            token_vectors.detach().float().cpu(),
            metadata=self.labels,
            global_step=step,
            tag=EMBEDDING_TAG,
        )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
