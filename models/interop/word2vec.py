"""The token-embedding table in word2vec's text format, which gensim's
`KeyedVectors.load_word2vec_format` reads: a `V D` line, then one line per token, its key and
its D numbers separated by spaces.

Keys are the tokens' exact bytes escaped by `models.interop.tokens.escape_token`, so that
none holds whitespace and each maps back to its token (`unescape_token`). For the bigram the
vectors are its table's rows (a token's next-token logits), for the GPT its input embeddings:
what `/v1/neighbours` ranks.
"""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import Checkpoint
from models.interop.tokens import escape_token, token_bytes

# float32 needs 9 significant digits to be read back bit for bit.
DIGITS = 9


def token_keys(checkpoint: Checkpoint) -> list[str]:
    tokenizer = checkpoint.tokenizer
    return [escape_token(token_bytes(tokenizer, i)) for i in range(tokenizer.vocab_size)]


def export_word2vec(checkpoint: Checkpoint, out: Path) -> Path:
    vectors = checkpoint.model.token_vectors().detach().float().cpu()
    keys = token_keys(checkpoint)
    lines = [f"{vectors.size(0)} {vectors.size(1)}"]
    for key, row in zip(keys, vectors.tolist(), strict=True):
        lines.append(key + " " + " ".join(f"{x:.{DIGITS}g}" for x in row))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
