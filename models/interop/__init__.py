"""Other tools' formats: export to Hugging Face `transformers`, GGUF (llama.cpp, Ollama) and
word2vec text (gensim), import GPT-2 from `transformers`, and training logs for TensorBoard.

Each format's library comes with the optional `[interop]` extra; a module here imports it at
its top, and the commands import the module only when they run.
"""

from __future__ import annotations


class InteropError(ValueError):
    """A checkpoint or folder cannot be converted; the message says why and what to do."""


INSTALL_HINT = "pip install -e '.[interop]'"
