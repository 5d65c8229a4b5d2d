"""A completion request in flight: its choices' engine streams, and OpenAI's answer to them.

Each choice is one engine request (prompt-major: choice `i * n + j` is prompt i's j-th), seeded
with `seed + index` when a seed is given, so choices differ yet stay reproducible. All choices
are admitted together or none is. With `best_of` > n, each prompt gets `best_of` candidates
(candidate j of prompt i seeded with `seed + i * best_of + j`) and the n with the highest mean
log-probability are returned, best first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import msgspec

from models.sampling import SamplingParams
from service.engine import Completion as EngineCompletion
from service.engine import EngineError, GenerationRequest, Stream, TokenEvent
from service.exceptions import InvalidRequestError
from service.inspection import Inspector, PromptTokenScore
from service.limits import Admission, check_new_tokens, check_produced, generation_failed
from service.loaded_model import LoadedModel
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.openai.errors import openai_error
from service.openai.prompts import Prompt, prompts_of
from service.openai.schemas import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
    SamplingFields,
)
from service.settings import Settings
from service.sse import sse

DEFAULT_MAX_TOKENS = 16


def sampling_params(data: SamplingFields, model: LoadedModel) -> SamplingParams:
    bias = []
    for key, value in (data.logit_bias or {}).items():
        if not (key.isascii() and key.isdigit()) or int(key) >= model.vocab_size:
            raise InvalidRequestError(
                f"`logit_bias` has the key {key!r}, but its keys are token ids, and model "
                f"{model.id!r} has token ids 0 to {model.vocab_size - 1}",
                param="logit_bias",
            )
        bias.append((int(key), value))
    return SamplingParams(
        temperature=data.temperature if data.temperature is not None else 1.0,
        top_k=data.top_k,
        top_p=data.top_p if data.top_p is not None else 1.0,
        min_p=data.min_p,
        repetition_penalty=data.repetition_penalty,
        presence_penalty=data.presence_penalty or 0.0,
        frequency_penalty=data.frequency_penalty or 0.0,
        logit_bias=tuple(sorted(bias)),
    )


@dataclass
class Choice:
    """One choice: its engine stream (None when the prompt is only scored) and the text
    offset reached so far."""

    index: int
    prompt: Prompt
    stream: Stream | None
    echo: bool = False
    echo_scores: Sequence[PromptTokenScore] = ()
    offset: int = 0  # characters of text (echo included) before the next token


def mean_logprob(completion: EngineCompletion | None) -> float:
    if completion is None or not completion.tokens:
        return float("-inf")
    return sum(t.logprob for t in completion.tokens) / len(completion.tokens)


class CompletionJob:
    """A checked completion request, with a Choice per engine request once started. The chat
    route's job (service.openai.chat) is this one with a prompt of its own making and chat's
    shapes."""

    id_prefix = "cmpl"

    def __init__(
        self,
        data: SamplingFields,
        model: LoadedModel,
        settings: Settings,
        *,
        best_of: int | None,
        max_tokens: int,
        logprobs: int | None,
        echo: bool,
    ):
        self.data = data
        self.model = model
        self.settings = settings
        self.n = data.n or 1
        self.best_of = best_of or self.n
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.echo = echo
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices: list[Choice] = []  # the candidates, best_of per prompt

    @classmethod
    def of(cls, data: CompletionRequest, model: LoadedModel, settings: Settings) -> CompletionJob:
        return cls(
            data,
            model,
            settings,
            best_of=data.best_of,
            max_tokens=data.max_tokens if data.max_tokens is not None else DEFAULT_MAX_TOKENS,
            logprobs=data.logprobs,
            echo=bool(data.echo),
        )

    def prompts(self) -> list[Prompt]:
        assert isinstance(self.data, CompletionRequest)
        return prompts_of(self.data.prompt, self.model, self.settings, "prompt")

    def check(self) -> None:
        data = self.data
        if self.best_of < self.n:
            raise InvalidRequestError(
                f"`best_of` ({self.best_of}) must be at least `n` ({self.n})", param="best_of"
            )
        if self.best_of > self.n and data.stream:
            raise InvalidRequestError(
                "`best_of` above `n` picks choices after they are all generated, so it cannot "
                "stream; leave out `stream` or `best_of`",
                param="best_of",
            )
        if self.max_tokens == 0 and not self.echo:
            raise InvalidRequestError(
                "`max_tokens` 0 generates nothing: set `echo` (with `logprobs`) to score the "
                "prompt",
                param="max_tokens",
            )
        check_new_tokens(self.settings, self.max_tokens, "max_tokens")

    async def start(self, inspector: Inspector, admission: Admission, client: str) -> None:
        """Check everything, score echoed prompts, then hand every choice to the engine at
        once; a failure here (before any byte is sent) becomes an error response."""
        self.check()
        prompts = self.prompts()
        if self.max_tokens:
            admission.check_size(self.model.engine, len(prompts) * self.best_of, "prompt")
        scores: list[Sequence[PromptTokenScore]] = [() for _ in prompts]
        if self.echo and self.logprobs is not None:
            for i, prompt in enumerate(prompts):
                ids = prompt.ids if prompt.tokens else []
                scores[i] = await inspector.score_prompt(self.model, ids, self.logprobs)
        streams = await self.submit(prompts, admission, client) if self.max_tokens else None
        for i, prompt in enumerate(prompts):
            for j in range(self.best_of):
                index = i * self.best_of + j
                stream = streams[index] if streams else None
                choice = Choice(index, prompt, stream, self.echo, scores[i])
                self.choices.append(choice)

    async def submit(
        self, prompts: list[Prompt], admission: Admission, client: str
    ) -> list[Stream]:
        data = self.data
        sampling = sampling_params(data, self.model)
        stop = [data.stop] if isinstance(data.stop, str) else data.stop or []
        requests = [
            GenerationRequest(
                prompt_ids=prompt.ids,
                max_new_tokens=self.max_tokens,
                sampling=sampling,
                seed=None if data.seed is None else (data.seed + i * self.best_of + j) % 2**63,
                stop=(*stop, *self.extra_stops()),
                top_logprobs=self.logprobs or 0,
                stream_tokens=bool(data.stream),
                timeout=self.settings.request_timeout,
            )
            for i, prompt in enumerate(prompts)
            for j in range(self.best_of)
        ]
        return await admission.submit(self.model.engine, requests, client, "prompt")

    def extra_stops(self) -> tuple[str, ...]:
        """Stop strings of the route's own, besides the request's (chat: the next turn)."""
        return ()

    def cancel(self) -> None:
        for choice in self.choices:
            if choice.stream is not None:
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
        prompt_tokens = sum(c.prompt.tokens for c in self.choices if c.index % self.best_of == 0)
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    def record(self, choice: Choice, completion: EngineCompletion | None) -> int:
        """Count a finished choice's tokens in the metrics; returns its completion tokens."""
        tokens = completion.usage.completion_tokens if completion else 0
        GENERATED_TOKENS.labels(model=self.model.id).inc(tokens)
        if choice.index % self.best_of == 0:
            PROMPT_TOKENS.labels(model=self.model.id).inc(choice.prompt.tokens)
        return tokens

    async def collect(self) -> list[EngineCompletion | None]:
        """Every candidate's end (None for one that is only scored)."""
        streams = [c.stream for c in self.choices if c.stream is not None]
        try:
            completions = await asyncio.gather(*(stream.collect() for stream in streams))
        except EngineError as err:
            raise generation_failed(err) from None
        finally:
            self.cancel()  # a no-op for finished streams; frees the rest if we were cancelled
        if not streams:
            return [None for _ in self.choices]
        check_produced(completions, self.settings)
        return list(completions)

    def picked(
        self, completions: list[EngineCompletion | None]
    ) -> list[tuple[int, Choice, EngineCompletion | None]]:
        """The choices returned, as (index, choice, completion): every candidate when best_of
        is n, else each prompt's n best by mean log-probability, best first."""
        ended = list(zip(self.choices, completions, strict=True))
        if self.best_of == self.n:
            return [(c.index, c, completion) for c, completion in ended]
        picked = []
        for start in range(0, len(ended), self.best_of):
            candidates = ended[start : start + self.best_of]
            best = sorted(candidates, key=lambda pair: mean_logprob(pair[1]), reverse=True)
            first = start // self.best_of * self.n
            picked += [(first + rank, c, done) for rank, (c, done) in enumerate(best[: self.n])]
        return picked

    async def whole(self) -> msgspec.Struct:
        completions = await self.collect()
        # every candidate was generated, those best_of leaves out too
        total = sum(self.record(c, done) for c, done in zip(self.choices, completions, strict=True))
        return self.answer(self.picked(completions), total)

    def answer(
        self, picked: list[tuple[int, Choice, EngineCompletion | None]], total: int
    ) -> msgspec.Struct:
        """The whole response, from the choices picked and the tokens generated in all."""
        choices = [
            CompletionChoice(
                text=(choice.prompt.text if choice.echo else "")
                + (completion.text if completion else ""),
                index=index,
                logprobs=self.logprobs_of(
                    choice, choice.echo_scores, completion.tokens if completion else ()
                ),
                finish_reason=completion.finish_reason if completion else "length",
            )
            for index, choice, completion in picked
        ]
        return self.envelope(choices, self.usage(total))

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

    def chunk(
        self,
        choice: Choice,
        text: str,
        logprobs: CompletionLogprobs | None,
        finish_reason: str | None = None,
    ) -> bytes:
        body = CompletionChoice(
            text=text, index=choice.index, logprobs=logprobs, finish_reason=finish_reason
        )
        return sse(self.envelope([body], None))

    def opening(self, choice: Choice) -> bytes | None:
        """The chunk a choice's stream begins with, if any: the echoed prompt."""
        if not choice.echo:
            return None
        return self.chunk(
            choice, choice.prompt.text, self.logprobs_of(choice, choice.echo_scores, ())
        )

    def token_chunk(self, choice: Choice, event: TokenEvent) -> bytes:
        return self.chunk(choice, event.text, self.logprobs_of(choice, (), [event]))

    def final_chunk(self, choice: Choice, reason: str) -> bytes:
        return self.chunk(choice, "", self.logprobs_of(choice, (), ()), reason)

    def usage_chunk(self, total: int) -> bytes:
        return sse(self.envelope([], self.usage(total)))

    async def events(self) -> AsyncIterator[bytes]:
        """OpenAI's chunks: per choice its opening, a chunk per token (choices interleaved as
        they come), a last one with its finish_reason; optionally a usage chunk; `[DONE]`. A
        client that leaves cancels this generator, and `finally` frees every engine slot."""
        try:
            for choice in self.choices:
                opening = self.opening(choice)
                if opening is not None:
                    yield opening
            total = 0
            generating = [c for c in self.choices if c.stream is not None]
            for choice in self.choices:
                if choice.stream is None:  # scored only
                    self.record(choice, None)
                    yield self.final_chunk(choice, "length")
            async for arrived in merged(generating):
                chunks = []
                for choice, event in arrived:
                    if event is not None:
                        chunks.append(self.token_chunk(choice, event))
                        continue
                    assert choice.stream is not None and choice.stream.completion is not None
                    completion = choice.stream.completion  # the stream has ended
                    total += self.record(choice, completion)
                    chunks.append(self.final_chunk(choice, completion.finish_reason))
                yield b"".join(chunks)
            options = self.data.stream_options
            if options is not None and options.include_usage:
                yield self.usage_chunk(total)
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

    async def forward(choice: Choice, stream: Stream) -> None:
        try:
            async for event in stream:
                arrived.put_nowait((choice, event))
            arrived.put_nowait((choice, None))
        except EngineError as err:
            arrived.put_nowait((choice, err))

    tasks = [asyncio.create_task(forward(c, c.stream)) for c in choices if c.stream is not None]
    open_streams = len(tasks)
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
