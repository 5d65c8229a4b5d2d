"""The trainer's settings: one dataclass, and the defaults that suit each model."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from models.bigram import BigramInit
from models.device import PRECISION_CHOICES
from models.tokenizer import MIN_BPE_VOCAB

DEFAULT_BPE_VOCAB = 2048

# Settings whose best value depends on the model. The bigram is one table whose loss is convex in
# its logits: it takes a far higher learning rate, no warm-up, no weight decay (which would pull
# it off the count-based optimum) and big batches, which cost it little; its add-one prior
# (laplace) makes that optimum the smoothed table.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "bigram": dict(
        max_steps=3000,
        batch_size=64,
        block_size=256,
        learning_rate=0.1,
        min_lr_ratio=0.01,
        warmup_steps=0,
        weight_decay=0.0,
        eval_interval=100,
        eval_iters=20,
        laplace=1.0,
    ),
    "gpt": dict(
        max_steps=2000,
        batch_size=12,
        block_size=64,
        learning_rate=1e-3,
        min_lr_ratio=0.1,
        warmup_steps=100,
        weight_decay=0.1,
        eval_interval=200,
        eval_iters=50,
        laplace=0.0,
    ),
}
MODEL_KINDS = tuple(MODEL_DEFAULTS)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


def checked_vocab_size(tokenizer: str, vocab_size: int | None) -> int | None:
    """The vocabulary size to ask `tokenizer` for: DEFAULT_BPE_VOCAB for bpe when not given,
    None for char, which takes the corpus' characters."""
    if tokenizer not in ("char", "bpe"):
        raise TrainingError(f"unknown tokenizer {tokenizer!r}; choose char or bpe")
    if tokenizer == "char":
        if vocab_size is not None:
            raise TrainingError("--vocab-size applies to --tokenizer bpe only")
        return None
    vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
    if vocab_size < MIN_BPE_VOCAB:
        raise TrainingError(
            f"--vocab-size {vocab_size} is too small: a byte-level BPE vocabulary "
            f"holds the {MIN_BPE_VOCAB} bytes plus the merges it learns"
        )
    return vocab_size


class _ModelDefault:
    def __repr__(self) -> str:
        return "PER_MODEL"


# The default of a field that MODEL_DEFAULTS fills in for the model being trained. Typed Any so
# that it can stand in a field of any type until __post_init__ replaces it.
PER_MODEL: Any = _ModelDefault()


@dataclass
class TrainConfig:
    model: str  # one of MODEL_KINDS
    data: str | None  # a corpus, prepared into the dataset cache (models.dataset) ...
    out: str
    dataset: str | None = None  # ... or a folder `tinygpt prepare` wrote
    max_steps: int = PER_MODEL
    batch_size: int = PER_MODEL
    block_size: int = PER_MODEL
    learning_rate: float = PER_MODEL
    min_lr_ratio: float = PER_MODEL
    warmup_steps: int = PER_MODEL
    weight_decay: float = PER_MODEL
    grad_clip: float = 1.0
    eval_interval: int = PER_MODEL
    eval_iters: int = PER_MODEL
    # The final full pass and the bigram's count-based optimum read the first val_tokens of
    # the val split (0: all of it); a large corpus' val split can hold far more than a
    # reliable estimate needs.
    val_tokens: int = 1_000_000
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0
    seed: int = 1337
    device: str = "auto"
    # Matrix multiplies in bf16 under autocast, or fp32 (models.device.resolve_precision);
    # `auto` takes bf16 where the device has it natively. The weights stay fp32 either way.
    precision: str = "auto"
    # Micro-batches per optimizer step, summed over all processes: the global batch is
    # batch_size * grad_accum_steps sequences whatever the number of processes, each of which
    # accumulates grad_accum_steps / world_size of them.
    grad_accum_steps: int = 1
    tokenizer: str = "char"  # "char" or "bpe"
    vocab_size: int | None = None  # bpe only: DEFAULT_BPE_VOCAB when not given
    # bigram
    init: BigramInit = "zeros"
    laplace: float = PER_MODEL  # pseudo-counts per table cell, as a prior in the objective
    # gpt
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    scale_embeddings: bool = False
    # folder for TensorBoard event files (models.interop.tensorboard); None writes none
    tensorboard: str | None = None

    @classmethod
    def defaults(cls, kind: str) -> dict[str, Any]:
        """Every setting's default for training model `kind` (`data` and `out` have none)."""
        if kind not in MODEL_DEFAULTS:
            raise TrainingError(f"unknown model {kind!r}; choose {' or '.join(MODEL_KINDS)}")
        shared = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        return {**shared, **MODEL_DEFAULTS[kind]}

    def __post_init__(self) -> None:
        for name, value in self.defaults(self.model).items():
            if getattr(self, name) is PER_MODEL:
                setattr(self, name, value)
        if (self.data is None) == (self.dataset is None):
            raise TrainingError("give --data (a corpus) or --dataset (a prepared one)")
        if self.val_tokens < 0:
            raise TrainingError("--val-tokens must be 0 (the whole val split) or more")
        self.vocab_size = checked_vocab_size(self.tokenizer, self.vocab_size)
        if self.grad_accum_steps < 1:
            raise TrainingError("--grad-accum-steps must be at least 1")
        if self.precision not in PRECISION_CHOICES:
            raise TrainingError(
                f"unknown precision {self.precision!r}; choose {', '.join(PRECISION_CHOICES)}"
            )
