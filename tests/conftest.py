"""Fixtures shared by the whole suite: corpora and tiny trained checkpoints."""

from __future__ import annotations

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
