"""Text generation, whole or streamed as Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.deadline import Deadline
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.openapi import JSONOrEventStreamOperation
from service.registry import Generation, ModelRegistry
from service.schemas import GenerateRequest, GenerateResponse, TokenStreamEvent


class EventStream(ServerSentEvent):
    """Litestar's SSE response, keeping `text/event-stream` in a handler whose other answers
    are JSON (a handler's media type would otherwise override a streaming response's)."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": self.media_type})


class EventBatch(ServerSentEventMessage):
    """Several events written out as one chunk."""

    def __init__(self, events: list[ServerSentEventMessage]):
        super().__init__()
        self.events = events

    def encode(self) -> bytes:
        return b"".join(event.encode() for event in self.events)


def count_tokens(result: GenerateResponse) -> None:
    GENERATED_TOKENS.labels(model=result.model).inc(result.usage.completion_tokens)
    PROMPT_TOKENS.labels(model=result.model).inc(result.usage.prompt_tokens)


def sse(event: str, data: msgspec.Struct) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=event, data=msgspec.json.encode(data).decode(), sep="\n")


async def generation_events(
    generation: Generation, timeout: float
) -> AsyncIterator[ServerSentEventMessage]:
    """A `token` event per token, then `done` with the whole response. When the client
    disconnects, Litestar cancels this generator, and leaving `async with` cancels the
    generation in the engine within one decode step."""
    stream = generation.stream
    deadline = Deadline(stream, timeout)
    async with stream:
        index = 0
        async for first in deadline.tokens():
            # A reader that fell behind sends what has piled up in one write, not one each.
            tokens = [first, *stream.ready_tokens()]
            events = [
                sse("token", TokenStreamEvent(index=index + i, id=t.token_id, text=t.text))
                for i, t in enumerate(tokens)
            ]
            yield events[0] if len(events) == 1 else EventBatch(events)
            index += len(tokens)
        assert stream.completion is not None
        result = deadline.finish(generation.response(stream.completion))
    count_tokens(result)
    yield sse("done", result)


class GenerationController(Controller):
    path = "/v1"
    tags = ["generation"]

    @post(
        "/generate",
        operation_id="generate",
        status_code=HTTP_200_OK,
        responses=MODEL_ERRORS,
        operation_class=JSONOrEventStreamOperation,
    )
    async def generate(
        self, data: JSONBody[GenerateRequest], registry: NamedDependency[ModelRegistry]
    ) -> GenerateResponse | EventStream:
        """Continue a prompt by sampling from a model; the same seed gives the same text."""
        if data.stream:
            # Checked and queued before the response starts: bad input still gets a 4xx.
            return EventStream(
                generation_events(
                    registry.start_generation(data), registry.settings.request_timeout
                )
            )
        result = await registry.generate(data)
        count_tokens(result)
        return result
