"""The interop tests run the real libraries of the optional `[interop]` extra.

`make test` runs without that extra, and these modules import it: there they are not
collected. `make test-interop` installs it first; a run that selects `-m interop` while any of
it is missing is an error, never a pass that tested nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.gpt import GPT, GPTConfig
from models.tokenizer import CharTokenizer
from tests.models.test_shipped_checkpoints import CHECKPOINTS

INTEROP_MODULES = ("transformers", "gguf", "gensim", "tensorboard", "llama_cpp")
MISSING = [name for name in INTEROP_MODULES if importlib.util.find_spec(name) is None]
if MISSING:
    collect_ignore_glob = ["test_*.py"]

SHIPPED_GPTS = ("gpt-char", "gpt-bpe")
PROMPT = "ROMEO: I love thee, and"
# Characters whose UTF-8 takes 1, 2, 3 and 4 bytes: the vocabulary of `unicode_gpt`.
UNICODE_CHARS = ["\n", " ", "a", "b", "n", "v", "é", "ï", "€", "\U0001f600"]


def pytest_configure(config: pytest.Config) -> None:
    if MISSING and config.option.markexpr == "interop":
        raise pytest.UsageError(
            f"-m interop needs the [interop] extra, and {', '.join(MISSING)} is missing: "
            "`make test-interop` installs it"
        )


def random_gpt_checkpoint(path: Path, chars: list[str], **config: object) -> Checkpoint:
    """A GPT of freshly drawn weights (seeded) over the characters `chars`, saved to `path`;
    its biases and LayerNorm gains drawn too, so that none is trivially 0 or 1."""
    torch.manual_seed(0)
    settings = dict(vocab_size=len(chars), block_size=32, n_layer=2, n_head=2, n_embd=16)
    model = GPT(GPTConfig(**{**settings, **config}))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    save_checkpoint(path, model, CharTokenizer(chars), metrics={"val_loss": 1.0})
    return load_checkpoint(path)


@pytest.fixture(params=SHIPPED_GPTS)
def shipped_gpt(request: pytest.FixtureRequest) -> Checkpoint:
    return load_checkpoint(CHECKPOINTS / request.param)


@pytest.fixture
def unicode_gpt(tmp_path: Path) -> Checkpoint:
    return random_gpt_checkpoint(tmp_path / "unicode-gpt", UNICODE_CHARS)
