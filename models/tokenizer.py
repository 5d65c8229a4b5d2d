"""Character-level tokenizer: the vocabulary is the sorted set of characters of the corpus."""

from __future__ import annotations

from collections.abc import Sequence


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
