"""OpenAI-compatible completions: `POST /v1/completions`, whole or streamed as SSE chunks.

Each choice is one engine request (prompt-major: choice `i * n + j` is prompt i's j-th), seeded
with `seed + index` when a seed is given, so choices differ yet stay reproducible. Errors on
this route use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK

from service.controllers.generation import EventBatch, EventStream
from service.engine import TokenEvent
from service.errors import http_error_handler, service_error_handler, unexpected_error_handler
from service.exceptions import GenerationTimeoutError, InvalidRequestError, ServiceError
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
    OpenAIErrorDetail,
    OpenAIErrorResponse,
)
from service.openapi import JSONOrEventStreamOperation
from service.registry import Generation, ModelRegistry, PromptTokenScore
from service.schemas import ErrorResponse, GenerateRequest

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
OPENAI_ERROR_CODES = {404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


def openai_error_handler(request: Request, exc: Exception) -> Response[OpenAIErrorResponse]:
    """The service's error, rewrapped in OpenAI's envelope (same status, message and param)."""
    if isinstance(exc, ServiceError):
        native = service_error_handler(request, exc)
    elif isinstance(exc, HTTPException):
        native = http_error_handler(request, exc)
    else:
        native = unexpected_error_handler(request, exc)
    status: int = native.status_code or 500
    detail = native.content.error if isinstance(native.content, ErrorResponse) else None
    message = detail.message if detail else "error"
    if status == 404 and not (detail and detail.param == "model"):
        code: str | None = "not_found"
    else:
        code = OPENAI_ERROR_CODES.get(status) or (detail.type if detail else None)
    error_type = OPENAI_ERROR_TYPES.get(status) or ("server_error" if status >= 500 else None)
    body = OpenAIErrorResponse(
        error=OpenAIErrorDetail(
            message=message,
            type=error_type or (detail.type if detail else "error"),
            param=detail.param if detail else None,
            code=code,
        )
    )
    return Response(body, status_code=status, headers=native.headers)


OPENAI_ERROR_DESCRIPTIONS = {
    400: "Invalid request; `error.param` names the field at fault",
    404: "Unknown model (`error.code` is model_not_found); the message lists the loaded ones",
    413: "The request body is larger than the server's limit (64 KiB)",
    503: "The models are still loading, or the model's queue is full (see `Retry-After`)",
}
OPENAI_ERRORS = {
    code: ResponseSpec(OpenAIErrorResponse, description=text, generate_examples=False)
    for code, text in OPENAI_ERROR_DESCRIPTIONS.items()
}


@dataclass
class Choice:
    """One choice being generated: its engine stream and what it has produced so far."""

    index: int
    prompt_index: int
    generation: Generation
    echo_text: str = ""
    echo_scores: Sequence[PromptTokenScore] = ()
    text: list[str] = field(default_factory=list)
    offset: int = 0  # characters of text (echo included) before the next token


class CompletionJob:
    """A checked completion request: its prompts, and a Choice per engine request."""

    def __init__(self, data: CompletionRequest, registry: ModelRegistry):
        self.data = data
        self.registry = registry
        self.prompts = [data.prompt] if isinstance(data.prompt, str) else data.prompt
        self.n = data.n or 1
        self.logprobs = data.logprobs
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices: list[Choice] = []
        self.model = registry.get(data.model).id
        self.scores: list[Sequence[PromptTokenScore]] = [() for _ in self.prompts]
        # TINYGPT_REQUEST_TIMEOUT: at the deadline every choice is cancelled in its engine and
        # what was produced is answered with finish_reason "timeout".
        self.timeout = registry.settings.request_timeout
        self.timed_out = False

    def native_request(self, prompt: str, index: int) -> GenerateRequest:
        data = self.data
        stop = data.stop if data.stop is not None else []
        try:
            return GenerateRequest(
                model=data.model,
                prompt=prompt,
                max_new_tokens=data.max_tokens if data.max_tokens is not None else 16,
                temperature=data.temperature if data.temperature is not None else 1.0,
                top_k=data.top_k,
                top_p=data.top_p if data.top_p is not None else 1.0,
                min_p=data.min_p,
                repetition_penalty=data.repetition_penalty,
                seed=None if data.seed is None else (data.seed + index) % 2**63,
                stop=stop,
                stream=bool(data.stream),
            )
        except (TypeError, ValueError) as err:  # msgspec structs do not check Meta here
            raise InvalidRequestError(str(err)) from None

    async def start(self) -> None:
        """Check everything, score echoed prompts, then hand every choice to the engine; a
        failure here (before any byte is sent) becomes an error response."""
        cap = self.registry.settings.max_new_tokens
        if self.data.max_tokens is not None and self.data.max_tokens > cap:
            raise InvalidRequestError(
                f"`max_tokens` is {self.data.max_tokens}, above this server's cap of {cap} "
                f"(TINYGPT_MAX_NEW_TOKENS); ask for at most {cap}",
                param="max_tokens",
            )
        if self.data.echo and self.logprobs is not None:
            for i, prompt in enumerate(self.prompts):
                self.registry.check_text_length(prompt, "prompt")
                self.scores[i] = await self.registry.score_prompt(self.model, prompt, self.logprobs)
        try:
            for i, prompt in enumerate(self.prompts):
                for j in range(self.n):
                    index = i * self.n + j
                    generation = self.registry.start_generation(
                        self.native_request(prompt, index), top_logprobs=self.logprobs or 0
                    )
                    choice = Choice(index=index, prompt_index=i, generation=generation)
                    if self.data.echo:
                        choice.echo_text, choice.echo_scores = prompt, self.scores[i]
                    self.choices.append(choice)
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        for choice in self.choices:
            choice.generation.stream.cancel()

    def logprobs_of(
        self, choice: Choice, scores: Sequence[PromptTokenScore], events: Sequence[TokenEvent]
    ) -> CompletionLogprobs:
        """Logprobs for prompt `scores` (echo) and then generated token `events`, with text
        offsets continuing from `choice.offset`, which this advances."""
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for score in scores:
            out.tokens.append(score.text)
            out.token_logprobs.append(score.logprob)
            out.top_logprobs.append(None if score.logprob is None else dict(score.top_logprobs))
            out.text_offset.append(choice.offset)
            choice.offset += len(score.text)
        for event in events:
            out.tokens.append(event.text)
            out.token_logprobs.append(event.logprob)
            out.top_logprobs.append({top.text: top.logprob for top in event.top_logprobs})
            out.text_offset.append(choice.offset)
            choice.offset += len(event.text)
        return out

    def usage(self, completion_tokens: int) -> CompletionUsage:
        prompt_tokens = sum(
            c.generation.prompt_tokens for c in self.choices if c.index % self.n == 0
        )
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    def record(self, choice: Choice, completion_tokens: int) -> None:
        GENERATED_TOKENS.labels(model=self.model).inc(completion_tokens)
        if choice.index % self.n == 0:
            PROMPT_TOKENS.labels(model=self.model).inc(choice.generation.prompt_tokens)

    def envelope(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None
    ) -> Completion:
        return Completion(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )

    def finish_reason(self, reason: str) -> str:
        return "timeout" if self.timed_out and reason == "cancelled" else reason

    async def whole(self) -> Completion:
        streams = [choice.generation.stream for choice in self.choices]
        try:
            with anyio.move_on_after(self.timeout) as scope:
                await asyncio.gather(*(stream.collect() for stream in streams))
            if scope.cancelled_caught:
                self.timed_out = True
                self.cancel()
            # Each stream ends within a decode step of its cancel; its Completion has every token.
            completions = [await stream.collect() for stream in streams]
        finally:
            self.cancel()  # a no-op for finished streams; frees the rest if we were cancelled
        if self.timed_out and not any(c.tokens for c in completions):
            raise GenerationTimeoutError(
                f"no token was generated within the {self.timeout:g} s request timeout "
                "(TINYGPT_REQUEST_TIMEOUT); retry, or ask a less busy server"
            )
        choices = []
        total = 0
        for choice, completion in zip(self.choices, completions, strict=True):
            tokens = completion.usage.completion_tokens
            total += tokens
            self.record(choice, tokens)
            logprobs = None
            if self.logprobs is not None:
                logprobs = self.logprobs_of(choice, choice.echo_scores, completion.tokens)
            choices.append(
                CompletionChoice(
                    text=choice.echo_text + completion.text,
                    index=choice.index,
                    logprobs=logprobs,
                    finish_reason=self.finish_reason(completion.finish_reason),
                )
            )
        return self.envelope(choices, self.usage(total))

    def on_deadline(self) -> None:
        self.timed_out = True
        self.cancel()

    def chunk(self, choice: CompletionChoice) -> ServerSentEventMessage:
        return sse_data(msgspec.json.encode(self.envelope([choice], None)).decode())

    def token_chunk(self, choice: Choice, event: TokenEvent) -> ServerSentEventMessage:
        logprobs = None
        if self.logprobs is not None:
            logprobs = self.logprobs_of(choice, (), [event])
        return self.chunk(
            CompletionChoice(
                text=event.text, index=choice.index, logprobs=logprobs, finish_reason=None
            )
        )

    def final_chunk(self, choice: Choice, reason: str) -> ServerSentEventMessage:
        empty = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        return self.chunk(
            CompletionChoice(
                text="",
                index=choice.index,
                logprobs=empty if self.logprobs is not None else None,
                finish_reason=self.finish_reason(reason),
            )
        )

    async def events(self) -> AsyncIterator[ServerSentEventMessage]:
        """OpenAI's chunks: a chunk per token per choice (interleaved as they come), a last one
        per choice with its finish_reason, optionally a usage chunk, then `[DONE]`. A client
        that leaves cancels this generator, and `finally` frees every engine slot."""
        try:
            for choice in self.choices:
                if choice.echo_text:
                    logprobs = None
                    if self.logprobs is not None:
                        logprobs = self.logprobs_of(choice, choice.echo_scores, ())
                    yield self.chunk(
                        CompletionChoice(
                            text=choice.echo_text,
                            index=choice.index,
                            logprobs=logprobs,
                            finish_reason=None,
                        )
                    )
            total = 0
            async for batch in merged(self.choices, self.on_deadline, self.timeout):
                chunks = []
                for choice, event in batch:
                    if event is not None:
                        chunks.append(self.token_chunk(choice, event))
                        continue
                    completion = choice.generation.stream.completion  # the stream has ended
                    assert completion is not None
                    total += completion.usage.completion_tokens
                    self.record(choice, completion.usage.completion_tokens)
                    chunks.append(self.final_chunk(choice, completion.finish_reason))
                # A reader that fell behind writes what piled up at once, not a chunk each.
                yield chunks[0] if len(chunks) == 1 else EventBatch(chunks)
            options = self.data.stream_options
            if options is not None and options.include_usage:
                yield sse_data(msgspec.json.encode(self.envelope([], self.usage(total))).decode())
            yield sse_data("[DONE]")
        finally:
            self.cancel()


def sse_data(data: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=data, sep="\n")


async def merged(
    choices: list[Choice], on_deadline: Callable[[], None], timeout: float
) -> AsyncIterator[list[tuple[Choice, TokenEvent | None]]]:
    """(choice, token event) as each choice's stream delivers, (choice, None) when it ends,
    in batches: whatever has arrived by the time the reader asks, at least one item, so that a
    reader that fell behind writes the pile at once. `on_deadline` is called once if `timeout`
    seconds pass first (it should cancel them all, which ends their streams).

    One forwarding task per choice for the whole stream, and one timer: a token costs the event
    loop a queue hand-over, not a task and a wait of its own."""
    arrived: asyncio.Queue[tuple[Choice, TokenEvent | None | Exception]] = asyncio.Queue()

    async def forward(choice: Choice) -> None:
        try:
            async for event in choice.generation.stream:
                arrived.put_nowait((choice, event))
            arrived.put_nowait((choice, None))
        except Exception as err:  # an engine failure: the reader raises it
            arrived.put_nowait((choice, err))

    timer = asyncio.get_running_loop().call_later(timeout, on_deadline)
    tasks = [asyncio.create_task(forward(choice)) for choice in choices]
    open_streams = len(choices)
    try:
        while open_streams:
            batch = [await arrived.get()]
            while not arrived.empty():
                batch.append(arrived.get_nowait())
            items: list[tuple[Choice, TokenEvent | None]] = []
            for choice, item in batch:
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    open_streams -= 1
                items.append((choice, item))
            yield items
    finally:
        timer.cancel()
        for task in tasks:
            task.cancel()


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]
    # Every class the app maps too, so that none of the app's native handlers wins here.
    exception_handlers = {
        ServiceError: openai_error_handler,
        HTTPException: openai_error_handler,
        Exception: openai_error_handler,
    }

    @post(
        "/completions",
        operation_id="createCompletion",
        status_code=HTTP_200_OK,
        responses=OPENAI_ERRORS,
        operation_class=JSONOrEventStreamOperation,
    )
    async def create_completion(
        self, data: JSONBody[CompletionRequest], registry: NamedDependency[ModelRegistry]
    ) -> Completion | EventStream:
        """OpenAI-compatible text completion (the official `openai` client works against
        `/v1`). `logprobs` reports the model's own log-probabilities, before temperature,
        top_k/top_p/min_p filtering and the repetition penalty; with `echo` the prompt's tokens
        are scored too (the first has no log-probability: null). With `stream: true` the answer
        is Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; bad input
        is refused with a 4xx before the stream starts."""
        job = CompletionJob(data, registry)
        await job.start()
        if data.stream:
            return EventStream(job.events())
        return await job.whole()
