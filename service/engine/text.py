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


class StopChecker:
    """Where a request's text ends, given its stop strings, and how much of it may go out.

    Text that could be the start of a stop string is held back until the next tokens show
    whether the stop string completes; the stop string itself never goes out.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.longest = max(map(len, self.stops), default=0)

    def stop_at(self, text: str, new_chars: int) -> int | None:
        """Index in `text` of the earliest stop string that ends within its last `new_chars`
        characters (earlier ones were looked for when their text arrived), or None."""
        if not self.stops:
            return None
        start = max(0, len(text) - new_chars - self.longest + 1)
        found = [i for i in (text.find(stop, start) for stop in self.stops) if i >= 0]
        return min(found, default=None)

    def releasable(self, text: str) -> int:
        """How many characters of `text` can go out: all but its longest end that could be
        the start of a stop string."""
        return len(text) - max((held_back(text, stop) for stop in self.stops), default=0)


def held_back(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `stop`. Only prefixes
    ending in text's last character can match, so those alone are compared."""
    if not text:
        return 0
    last = text[-1]
    end = min(len(stop) - 1, len(text))
    while (i := stop.rfind(last, 0, end)) >= 0:
        if text.endswith(stop[: i + 1]):
            return i + 1
        end = i
    return 0
