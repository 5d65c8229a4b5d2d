"""Text generation, whole or streamed as Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from models.sampling import SamplingParams
from service.controllers import MODEL_ERRORS, error_responses
from service.engine import Completion, EngineError, GenerationRequest, Stream
from service.limits import (
    Admission,
    check_new_tokens,
    check_produced,
    check_text_length,
    generation_failed,
)
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.openapi import JSONOrEventStreamOperation
from service.registry import ModelRegistry
from service.schemas import (
    ErrorDetail,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    TokenStreamEvent,
    Usage,
)
from service.security import client_key
from service.settings import Settings
from service.sse import EventStream, sse


def response_of(model: str, completion: Completion, prompt_tokens: int) -> GenerateResponse:
    """`prompt_tokens` are the request's own: an empty prompt's start token is not counted."""
    return GenerateResponse(
        model=model,
        text=completion.text,
        token_ids=[event.token_id for event in completion.tokens],
        finish_reason=completion.finish_reason,
        usage=Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion.usage.completion_tokens
        ),
    )


def count_tokens(result: GenerateResponse) -> None:
    GENERATED_TOKENS.labels(model=result.model).inc(result.usage.completion_tokens)
    PROMPT_TOKENS.labels(model=result.model).inc(result.usage.prompt_tokens)


async def generation_events(model: str, stream: Stream, prompt_tokens: int) -> AsyncIterator[bytes]:
    """A `token` event per token, then `done` with the whole response (or `error`, should
    generation fail). When the client disconnects, Litestar cancels this generator, and
    leaving `async with` cancels the generation in the engine within one decode step."""
    async with stream:
        index = 0
        try:
            async for first in stream:
                tokens = [first, *stream.ready_tokens()]
                yield b"".join(  # what piled up goes out in one write
                    sse(TokenStreamEvent(index=index + i, id=t.token_id, text=t.text), "token")
                    for i, t in enumerate(tokens)
                )
                index += len(tokens)
        except EngineError as err:
            detail = ErrorDetail(message=generation_failed(err).message, type="generation_failed")
            yield sse(ErrorResponse(error=detail), "error")
            return
        assert stream.completion is not None
        result = response_of(model, stream.completion, prompt_tokens)
    count_tokens(result)
    yield sse(result, "done")


class GenerationController(Controller):
    path = "/"
    tags = ["generation"]

    @post(
        "/generate",
        operation_id="generate",
        status_code=HTTP_200_OK,
        responses={**MODEL_ERRORS, **error_responses(429, 500, 504)},
        operation_class=JSONOrEventStreamOperation,
    )
    async def generate(
        self,
        data: JSONBody[GenerateRequest],
        request: Request,
        registry: NamedDependency[ModelRegistry],
        admission: NamedDependency[Admission],
        settings: NamedDependency[Settings],
    ) -> GenerateResponse | EventStream:
        """Continue a prompt by sampling from a model; the same seed gives the same text."""
        model = registry.get(data.model)
        check_text_length(settings, data.prompt, "prompt")
        check_new_tokens(settings, data.max_new_tokens, "max_new_tokens")
        prompt_ids = model.prompt_ids(data.prompt)
        engine_request = GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=data.max_new_tokens,
            sampling=SamplingParams(
                temperature=data.temperature,
                top_k=data.top_k,
                top_p=data.top_p,
                min_p=data.min_p,
                repetition_penalty=data.repetition_penalty,
            ),
            seed=data.seed,
            stop=(data.stop,) if isinstance(data.stop, str) else tuple(data.stop),
            stream_tokens=data.stream,
            timeout=settings.request_timeout,
        )
        # Checked and queued before the response starts: bad input still gets a 4xx.
        client = client_key(request)
        [stream] = await admission.submit(model.engine, [engine_request], client, "prompt")
        prompt_tokens = len(prompt_ids) if data.prompt else 0
        if data.stream:
            return EventStream(generation_events(model.id, stream, prompt_tokens))
        async with stream:  # leaving early (client gone) cancels the generation
            try:
                completion = await stream.collect()
            except EngineError as err:
                raise generation_failed(err) from None
        check_produced([completion], settings)
        result = response_of(model.id, completion, prompt_tokens)
        count_tokens(result)
        return result
