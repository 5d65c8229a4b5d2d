"""The per-request time limit (`TINYGPT_REQUEST_TIMEOUT`) on a generation.

At the deadline the generation is cancelled in its engine (within one decode step); what was
produced is still answered, with `finish_reason: "timeout"` in place of the engine's
"cancelled". A non-streamed request that produced nothing gets a 504 instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from service.engine import Completion, Stream, TokenEvent
from service.exceptions import GenerationTimeoutError
from service.schemas import GenerateResponse


class Deadline:
    """Reads a stream's tokens until it ends; if `seconds` pass first, cancels it in its engine
    and reads on to the end, so that what was produced is all reported.

    The deadline is one timer per request, not a timeout around every token's wait: a token
    costs the event loop no more than the stream's own hand-over."""

    def __init__(self, stream: Stream, seconds: float):
        self.stream = stream
        self.seconds = seconds
        self.timed_out = False

    async def tokens(self) -> AsyncIterator[TokenEvent]:
        timer = asyncio.get_running_loop().call_later(self.seconds, self.expire)
        try:
            async for event in self.stream:
                yield event
        finally:
            timer.cancel()

    def expire(self) -> None:
        self.timed_out = True
        self.stream.cancel()

    async def collect(self) -> Completion:
        async for _ in self.tokens():
            pass
        assert self.stream.completion is not None
        return self.stream.completion

    def finish(self, response: GenerateResponse) -> GenerateResponse:
        """`response` with "timeout" as its finish_reason when the deadline ended it."""
        if self.timed_out and response.finish_reason == "cancelled":
            return msgspec.structs.replace(response, finish_reason="timeout")
        return response

    def check_produced(self, response: GenerateResponse) -> GenerateResponse:
        """A timed-out generation with no token at all is a 504 rather than an empty 200."""
        if response.finish_reason == "timeout" and not response.token_ids:
            raise GenerationTimeoutError(
                f"no token was generated within the {self.seconds:g} s request timeout "
                "(TINYGPT_REQUEST_TIMEOUT); retry, or ask a less busy server"
            )
        return response
