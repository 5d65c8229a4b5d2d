"""The per-request time limit (`TINYGPT_REQUEST_TIMEOUT`) on a generation.

At the deadline the generation is cancelled in its engine (within one decode step); what was
produced is still answered, with `finish_reason: "timeout"` in place of the engine's
"cancelled". A non-streamed request that produced nothing gets a 504 instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec

from service.engine import Completion, Stream, TokenEvent
from service.exceptions import GenerationTimeoutError
from service.schemas import GenerateResponse


class Deadline:
    """Reads a stream's tokens until it ends or `seconds` pass; then cancels it and reads the
    few tokens still on their way, so that what was produced is all reported."""

    def __init__(self, stream: Stream, seconds: float):
        self.stream = stream
        self.seconds = seconds
        self.timed_out = False

    async def tokens(self) -> AsyncIterator[TokenEvent]:
        end = anyio.current_time() + self.seconds
        while True:
            event: TokenEvent | None = None
            # The cancel scope covers the wait only, never a `yield`.
            with anyio.move_on_after(end - anyio.current_time()):
                try:
                    event = await self.stream.__anext__()
                except StopAsyncIteration:
                    return
            if event is None:
                break
            yield event
        self.timed_out = True
        self.stream.cancel()
        async for event in self.stream:
            yield event

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
