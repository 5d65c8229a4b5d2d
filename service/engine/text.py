"""Turning generated tokens into streamed text: incremental decoding and stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDecoder:
    """The text that each new token adds, without ever cutting a character in two.

    A byte-level BPE token may hold half of a UTF-8 character, which decodes to U+FFFD on its
    own; its text is withheld (an empty delta) until a later token completes the character.
    Each step decodes only the few tokens since the last settled point, not the whole output.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = 0  # tokens before this point have had their text returned

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        settled = self.decode(self.ids[self.prefix_offset : self.read_offset])
        extended = self.decode(self.ids[self.prefix_offset :])
        if len(extended) <= len(settled) or extended.endswith(REPLACEMENT_CHARACTER):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return extended[len(settled) :]


def find_stop(text: str, stops: Sequence[str], new_chars: int) -> int | None:
    """Index in `text` of the earliest stop string that ends within its last `new_chars`
    characters (earlier ones were looked for when their text arrived), or None."""
    longest = max(map(len, stops))
    start = max(0, len(text) - new_chars - longest + 1)
    found = [i for i in (text.find(stop, start) for stop in stops) if i >= 0]
    return min(found, default=None)


def partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string: text that
    must be held back until the next tokens show whether a stop string completes."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
