"""Server-Sent Events: the response class, and events encoded once, as the bytes sent.

Litestar's own ServerSentEvent hands each event through two iterator wrappers, encodes it
with a StringIO and a regular expression per field, and starts every response with a hop to
a worker thread. An event here is its bytes, made once: `data` is one JSON document (JSON
has no raw line breaks) or a short sentinel such as `[DONE]`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar.response import Stream
from litestar.response.base import ASGIResponse

_encode = msgspec.json.Encoder().encode
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what the SSE format counts as one


class EventStream(Stream):
    """A `text/event-stream` response of already encoded events (bytes), kept with its media
    type in a handler whose other answers are JSON (the handler's would otherwise win)."""

    def __init__(self, events: AsyncIterator[bytes]):
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


def sse(data: msgspec.Struct | str, event: str | None = None) -> bytes:
    """One event: its `event:` line when named, the data on `data:` lines, a blank line."""
    if isinstance(data, str):
        lines = LINE_BREAK.split(data)
        payload = b"".join(b"data: " + line.encode() + b"\n" for line in lines)
    else:
        payload = b"data: " + _encode(data) + b"\n"
    if event is not None:
        payload = b"event: " + event.encode() + b"\n" + payload
    return payload + b"\n"
