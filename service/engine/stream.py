"""The reading end of one request: an async iterator over its tokens, fed by the decode thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from service.engine.request import Completion, GenerationRequest, TokenEvent

StreamItem = TokenEvent | Completion | BaseException


class Stream:
    """The tokens of one request, as an async iterator; made by `Engine.submit`.

    Iterating yields TokenEvents (none if the request's `stream_tokens` is False) and stops
    when the request ends; `completion` is then set. An engine failure is raised instead.
    `cancel()` (or leaving `async with stream:` early) ends generation within one decode step
    and frees the request's slot; the stream still ends with a Completion, reason "cancelled".
    """

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        cancel_signal: threading.Event,
    ):
        self.request = request
        self.completion: Completion | None = None
        self.loop = loop  # the decode thread hands events to this loop
        self.queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self.held_back: Completion | BaseException | None = None  # see ready_tokens
        self.cancel_requested = False  # read by the decode thread at each step
        self.cancel_signal = cancel_signal  # tells the decode thread to look
        self.ended = False  # the last item (Completion or error) has been queued
        self.end_callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        if not self.cancel_requested and self.completion is None:
            self.cancel_requested = True
            self.cancel_signal.set()

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the event loop once the request has left the engine, before a
        reader sees its end: whatever the request held (a client's share) is free by then."""
        if self.ended:
            callback()
        else:
            self.end_callbacks.append(callback)

    def put(self, item: StreamItem) -> None:
        """Queue an item from the decode thread's deliveries (on the event loop)."""
        if not isinstance(item, TokenEvent):
            self.ended = True
            for callback in self.end_callbacks:
                callback()
            self.end_callbacks.clear()
        self.queue.put_nowait(item)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.completion is not None:
            raise StopAsyncIteration
        item, self.held_back = self.held_back or await self.queue.get(), None
        if isinstance(item, TokenEvent):
            return item
        if isinstance(item, Completion):
            self.completion = item
            raise StopAsyncIteration
        raise item

    def ready_tokens(self) -> list[TokenEvent]:
        """The token events already delivered and not yet read, without waiting: a reader that
        fell behind can write them out together."""
        events: list[TokenEvent] = []
        while self.held_back is None and not self.queue.empty():
            item = self.queue.get_nowait()
            if isinstance(item, TokenEvent):
                events.append(item)
            else:
                self.held_back = item  # the end: the next __anext__ takes it
        return events

    async def collect(self) -> Completion:
        """Wait for the end and return the Completion (its `tokens` hold every event)."""
        async for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()
