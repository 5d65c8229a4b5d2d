"""Server-Sent Events responses: the response class, and events written out together."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse


class EventStream(ServerSentEvent):
    """Litestar's SSE response, keeping `text/event-stream` in a handler whose other answers
    are JSON (a handler's media type would otherwise override a streaming response's)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


class EventBatch(ServerSentEventMessage):
    """Several events written out as one chunk: a reader that fell behind sends what piled
    up in one write, not one each."""

    def __init__(self, events: list[ServerSentEventMessage]):
        super().__init__()
        self.events = events

    def encode(self) -> bytes:
        return b"".join(event.encode() for event in self.events)


def batch(events: list[ServerSentEventMessage]) -> ServerSentEventMessage:
    return events[0] if len(events) == 1 else EventBatch(events)


def sse(data: msgspec.Struct | str, event: str | None = None) -> ServerSentEventMessage:
    text = data if isinstance(data, str) else msgspec.json.encode(data).decode()
    return ServerSentEventMessage(event=event, data=text, sep="\n")
