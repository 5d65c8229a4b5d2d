"""Tokenizers: characters (the vocabulary is the sorted set of characters of the corpus) and
byte-level BPE (subwords learned on the corpus). Both offer the same interface: `kind`,
`vocab_size`, `start_id`, `encode`, `decode`, `token_text`, `to_dict` and `from_dict`.
models.dataset learns a BPE vocabulary for training without looking at validation."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

MIN_BPE_VOCAB = 256  # one token per byte before any merge


class UnknownCharacterError(ValueError):
    """Raised when text holds characters that are not in the tokenizer's vocabulary."""

    def __init__(self, unknown: list[tuple[int, str]]):
        self.unknown = unknown
        shown = ", ".join(f"{ch!r} at position {pos}" for pos, ch in unknown[:10])
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        super().__init__(
            f"text contains {len(unknown)} character(s) outside the model's vocabulary: "
            f"{shown}{more}; remove or replace them"
        )


class CharTokenizer:
    """Maps each character of the vocabulary to its index in the sorted vocabulary."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary must be distinct single characters")
        self.chars = list(chars)
        self._index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def start_id(self) -> int:
        """Token that an empty prompt starts from: newline, the corpus' natural separator."""
        return self._index.get("\n", 0)

    def encode(self, text: str) -> list[int]:
        index = self._index
        try:
            return [index[ch] for ch in text]
        except KeyError:
            unknown = [(pos, ch) for pos, ch in enumerate(text) if ch not in index]
            raise UnknownCharacterError(unknown) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_text(self, token_id: int) -> str:
        return self.chars[token_id]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        if data.get("kind") != cls.kind:
            raise ValueError(f"unsupported tokenizer kind {data.get('kind')!r}")
        return cls(data["vocab"])


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) from Hugging Face `tokenizers`.

    Text is split into UTF-8 bytes before merging, and all 256 bytes are in the vocabulary, so
    every string encodes: nothing is ever out of vocabulary. A word in running text usually
    carries its leading space (" king" is one token, "king" at the start of a line may be two).
    """

    kind = "bpe"

    def __init__(self, tokenizer: HFTokenizer):
        self.hf = tokenizer

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges on `texts` until the vocabulary holds `vocab_size` tokens (or no pair
        repeats). Each text is pre-tokenized on its own: pieces of a larger text must be cut
        where no pre-token spans (models.dataset does). No special tokens: nothing in a
        plain-text corpus marks where they would go, and one would make a literal
        "<|endoftext|>" in a prompt encode to an untrained id."""
        if vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: a byte-level BPE vocabulary holds "
                f"the {MIN_BPE_VOCAB} bytes plus the merges it learns"
            )
        tokenizer = HFTokenizer(BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def start_id(self) -> int:
        """Token that an empty prompt starts from: newline, the corpus' natural separator."""
        ids = self.encode("\n")
        return ids[0] if len(ids) == 1 else 0

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        # A token may hold part of a multi-byte character; decoded alone, that part shows as
        # U+FFFD, so decode a whole sequence at once rather than token by token.
        return self.hf.decode(list(ids))

    def token_text(self, token_id: int) -> str:
        return self.hf.decode([token_id])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        if data.get("kind") != cls.kind:
            raise ValueError(f"unsupported tokenizer kind {data.get('kind')!r}")
        try:
            return cls(HFTokenizer.from_str(json.dumps(data["tokenizer"])))
        except Exception as err:  # `tokenizers` raises a bare Exception on malformed JSON
            raise ValueError(f"malformed BPE tokenizer ({err})") from err


TextTokenizer = CharTokenizer | BPETokenizer
TOKENIZERS: dict[str, type[CharTokenizer] | type[BPETokenizer]] = {
    CharTokenizer.kind: CharTokenizer,
    BPETokenizer.kind: BPETokenizer,
}


def tokenizer_from_dict(data: dict) -> TextTokenizer:
    """Rebuild whichever tokenizer `to_dict` described (a checkpoint manifest's `tokenizer`)."""
    kind = data.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"unsupported tokenizer kind {kind!r}; this build reads char and bpe")
    return TOKENIZERS[kind].from_dict(data)
