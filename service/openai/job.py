"""A completion request in flight: its choices' engine streams, and OpenAI's answer to them.

Each choice is one engine request (prompt-major: choice `i * n + j` is prompt i's j-th), seeded
with `seed + index` when a seed is given, so choices differ yet stay reproducible. All choices
are admitted together or none is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from litestar.response import ServerSentEventMessage

from models.sampling import SamplingParams
from service.engine import Completion as EngineCompletion
from service.engine import EngineError, GenerationRequest, Stream, TokenEvent
from service.inspection import Inspector, PromptTokenScore
from service.limits import (
    Admission,
    check_new_tokens,
    check_produced,
    check_text_length,
    generation_failed,
)
from service.loaded_model import LoadedModel
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.openai.errors import openai_error
from service.openai.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
)
from service.settings import Settings
from service.sse import batch, sse

DEFAULT_MAX_TOKENS = 16


@dataclass
class Choice:
    """One choice being generated: its engine stream and the text offset reached so far."""

    index: int
    stream: Stream
    prompt_tokens: int  # its prompt's own: an empty prompt's start token is not counted
    echo_text: str = ""
    echo_scores: Sequence[PromptTokenScore] = ()
    offset: int = 0  # characters of text (echo included) before the next token


class CompletionJob:
    """A checked completion request, with a Choice per engine request once started."""

    def __init__(self, data: CompletionRequest, model: LoadedModel, settings: Settings):
        self.data = data
        self.model = model
        self.settings = settings
        self.prompts = [data.prompt] if isinstance(data.prompt, str) else data.prompt
        self.n = data.n or 1
        self.logprobs = data.logprobs
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices: list[Choice] = []

    async def start(self, inspector: Inspector, admission: Admission, client: str) -> None:
        """Check everything, score echoed prompts, then hand every choice to the engine at
        once; a failure here (before any byte is sent) becomes an error response."""
        data = self.data
        admission.check_size(self.model.engine, len(self.prompts) * self.n, "prompt")
        max_tokens = data.max_tokens if data.max_tokens is not None else DEFAULT_MAX_TOKENS
        check_new_tokens(self.settings, max_tokens, "max_tokens")
        for prompt in self.prompts:
            check_text_length(self.settings, prompt, "prompt")
        prompt_ids = [self.model.prompt_ids(prompt) for prompt in self.prompts]
        scores: list[Sequence[PromptTokenScore]] = [() for _ in self.prompts]
        if data.echo and self.logprobs is not None:
            for i, prompt in enumerate(self.prompts):
                ids = self.model.encode(prompt, "prompt")
                scores[i] = await inspector.score_prompt(self.model, ids, self.logprobs)
        sampling = SamplingParams(
            temperature=data.temperature if data.temperature is not None else 1.0,
            top_k=data.top_k,
            top_p=data.top_p if data.top_p is not None else 1.0,
            min_p=data.min_p,
            repetition_penalty=data.repetition_penalty,
        )
        stop = [data.stop] if isinstance(data.stop, str) else data.stop or []
        requests = [
            GenerationRequest(
                prompt_ids=ids,
                max_new_tokens=max_tokens,
                sampling=sampling,
                seed=None if data.seed is None else (data.seed + i * self.n + j) % 2**63,
                stop=tuple(stop),
                top_logprobs=self.logprobs or 0,
                stream_tokens=bool(data.stream),
                timeout=self.settings.request_timeout,
            )
            for i, ids in enumerate(prompt_ids)
            for j in range(self.n)
        ]
        streams = admission.submit(self.model.engine, requests, client, "prompt")
        for index, stream in enumerate(streams):
            i = index // self.n
            choice = Choice(index, stream, len(prompt_ids[i]) if self.prompts[i] else 0)
            if data.echo:
                choice.echo_text, choice.echo_scores = self.prompts[i], scores[i]
            self.choices.append(choice)

    def cancel(self) -> None:
        for choice in self.choices:
            choice.stream.cancel()

    def logprobs_of(
        self, choice: Choice, scores: Sequence[PromptTokenScore], events: Sequence[TokenEvent]
    ) -> CompletionLogprobs | None:
        """Logprobs for prompt `scores` (echo) and then generated token `events`, with text
        offsets continuing from `choice.offset`, which this advances; None unless asked for."""
        if self.logprobs is None:
            return None
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
        prompt_tokens = sum(c.prompt_tokens for c in self.choices if c.index % self.n == 0)
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    def record(self, choice: Choice, completion: EngineCompletion) -> int:
        """Count a finished choice's tokens in the metrics; returns its completion tokens."""
        tokens = completion.usage.completion_tokens
        GENERATED_TOKENS.labels(model=self.model.id).inc(tokens)
        if choice.index % self.n == 0:
            PROMPT_TOKENS.labels(model=self.model.id).inc(choice.prompt_tokens)
        return tokens

    def envelope(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None
    ) -> Completion:
        return Completion(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.model.id,
            choices=choices,
            usage=usage,
        )

    async def whole(self) -> Completion:
        try:
            completions = await asyncio.gather(*(c.stream.collect() for c in self.choices))
        except EngineError as err:
            raise generation_failed(err) from None
        finally:
            self.cancel()  # a no-op for finished streams; frees the rest if we were cancelled
        check_produced(completions, self.settings)
        total = 0
        choices = []
        for choice, completion in zip(self.choices, completions, strict=True):
            total += self.record(choice, completion)
            choices.append(
                CompletionChoice(
                    text=choice.echo_text + completion.text,
                    index=choice.index,
                    logprobs=self.logprobs_of(choice, choice.echo_scores, completion.tokens),
                    finish_reason=completion.finish_reason,
                )
            )
        return self.envelope(choices, self.usage(total))

    def chunk(
        self,
        choice: Choice,
        text: str,
        logprobs: CompletionLogprobs | None,
        finish_reason: str | None = None,
    ) -> ServerSentEventMessage:
        body = CompletionChoice(
            text=text, index=choice.index, logprobs=logprobs, finish_reason=finish_reason
        )
        return sse(self.envelope([body], None))

    async def events(self) -> AsyncIterator[ServerSentEventMessage]:
        """OpenAI's chunks: a chunk per token per choice (interleaved as they come), a last one
        per choice with its finish_reason, optionally a usage chunk, then `[DONE]`. A client
        that leaves cancels this generator, and `finally` frees every engine slot."""
        try:
            for choice in self.choices:
                if choice.echo_text:
                    logprobs = self.logprobs_of(choice, choice.echo_scores, ())
                    yield self.chunk(choice, choice.echo_text, logprobs)
            total = 0
            async for arrived in merged(self.choices):
                chunks = []
                for choice, event in arrived:
                    if event is not None:
                        logprobs = self.logprobs_of(choice, (), [event])
                        chunks.append(self.chunk(choice, event.text, logprobs))
                        continue
                    completion = choice.stream.completion  # the stream has ended
                    assert completion is not None
                    total += self.record(choice, completion)
                    empty = self.logprobs_of(choice, (), ())
                    chunks.append(self.chunk(choice, "", empty, completion.finish_reason))
                yield batch(chunks)
            options = self.data.stream_options
            if options is not None and options.include_usage:
                yield sse(self.envelope([], self.usage(total)))
            yield sse("[DONE]")
        except EngineError as err:
            yield sse(openai_error(500, generation_failed(err).message))
            yield sse("[DONE]")
        finally:
            self.cancel()


async def merged(choices: list[Choice]) -> AsyncIterator[list[tuple[Choice, TokenEvent | None]]]:
    """(choice, token event) as each choice's stream delivers, (choice, None) when it ends,
    in batches: whatever has arrived by the time the reader asks, at least one item, so that a
    reader that fell behind writes the pile at once. An engine error is raised.

    One forwarding task per choice for the whole stream: a token costs the event loop a queue
    hand-over, not a task and a wait of its own."""
    arrived: asyncio.Queue[tuple[Choice, TokenEvent | None | EngineError]] = asyncio.Queue()

    async def forward(choice: Choice) -> None:
        try:
            async for event in choice.stream:
                arrived.put_nowait((choice, event))
            arrived.put_nowait((choice, None))
        except EngineError as err:
            arrived.put_nowait((choice, err))

    tasks = [asyncio.create_task(forward(choice)) for choice in choices]
    open_streams = len(choices)
    try:
        while open_streams:
            pile = [await arrived.get()]
            while not arrived.empty():
                pile.append(arrived.get_nowait())
            items: list[tuple[Choice, TokenEvent | None]] = []
            for choice, item in pile:
                if isinstance(item, EngineError):
                    raise item
                if item is None:
                    open_streams -= 1
                items.append((choice, item))
            yield items
    finally:
        for task in tasks:
            task.cancel()
