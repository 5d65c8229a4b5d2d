"""Fixtures shared by the whole suite: corpora and tiny trained checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

FALLBACK_TEXT = """\
First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


def corpus_text(chars: int) -> str:
    """The first `chars` characters of the canonical corpus, or a small stand-in."""
    if SHARED_CORPUS.is_file():
        return SHARED_CORPUS.read_text(encoding="utf-8")[:chars]
    text = FALLBACK_TEXT
    while len(text) < chars:
        text += FALLBACK_TEXT
    return text[:chars]


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory):
    """Training with --data prepares into a dataset cache (models.dataset): the suite's, in a
    temporary folder, is shared by its tests (and the trainers they start) but no one else."""
    previous = os.environ.get("TINYGPT_CACHE")
    os.environ["TINYGPT_CACHE"] = str(tmp_path_factory.mktemp("tinygpt-cache"))
    yield
    if previous is None:
        del os.environ["TINYGPT_CACHE"]
    else:
        os.environ["TINYGPT_CACHE"] = previous


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 20 KB of text: enough for a few training steps and a validation split."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text(20_000), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def canonical_corpus() -> str:
    """The full canonical corpus; tests that measure real quality need it."""
    if not SHARED_CORPUS.is_file():
        pytest.skip(f"the canonical corpus is not at {SHARED_CORPUS}")
    return SHARED_CORPUS.read_text(encoding="utf-8")
