"""The generation engine: one decode loop per model, many requests decoded together.

A dedicated thread owns the model. Each step it admits waiting requests into free rows
(prefilling their prompts), advances every running sequence by one token in a single batched
forward pass, samples all rows at once, and retires the sequences that are done. Requests
therefore join and leave at step boundaries (continuous batching): a long request never
holds up a short one.

    engine = Engine(checkpoint.model, checkpoint.tokenizer, EngineConfig(max_running=64))
    engine.start()
    stream = engine.submit(GenerationRequest(prompt_ids=ids, max_new_tokens=100, seed=1))
    async for event in stream:          # TokenEvent per token
        ...
    stream.completion.finish_reason     # after the loop: "length" | "stop" | "cancelled"
    engine.stop()

Seeded sampling is batch-invariant: every request has its own generator and every step draws
exactly one number from it, so the same seed and parameters give the same text whether the
request runs alone or among others.

Log-probabilities in events are the model's own (log-softmax of its logits), before the
repetition penalty, temperature and filters; non-finite values are floored at
LOGPROB_FLOOR so that they always serialise to JSON.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import torch

from models.bigram import BigramLanguageModel
from models.checkpoint import Checkpoint
from models.gpt import GPT
from models.sampling import BatchParams, SamplingParams, sample_batch, seeded_generator
from service.engine_metrics import EngineMetrics
from service.engine_runners import make_runner
from service.engine_text import IncrementalDecoder, find_stop, partial_stop_length

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 5
LOGPROB_FLOOR = -9999.0  # stands in for -inf (and NaN) log-probabilities: JSON has neither

FinishReason = Literal["length", "stop", "cancelled"]
TopCandidates = tuple[list[list[int]], list[list[float]]]  # per row: ids, logprobs (best first)


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is full: try again later (HTTP 503)."""


class EngineClosedError(RuntimeError):
    """The engine is not running: not started yet, or stopped."""


class EngineError(RuntimeError):
    """The decode step failed; every request in the batch at the time ends with this."""


class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]  # not empty; a prompt longer than the context is windowed
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None  # None: fresh entropy
    stop: Sequence[str] = ()  # generation ends before the first of these; it is cut out
    top_logprobs: int = 0  # alternatives to report per token, 0..MAX_TOP_LOGPROBS
    # False: the stream yields no TokenEvents, only ends with the Completion (which holds them
    # all), so a reader that wants the whole result is not woken at every decode step
    stream_tokens: bool = True

    def __post_init__(self) -> None:
        s = self.sampling
        problems = [
            (not self.prompt_ids, "prompt_ids must not be empty"),
            (self.max_new_tokens < 1, "max_new_tokens must be at least 1"),
            (not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs must be in 0..5"),
            (any(not stop for stop in self.stop), "stop strings must not be empty"),
            (s.temperature < 0, "temperature must be >= 0"),
            (s.top_k is not None and s.top_k < 0, "top_k must be >= 0"),
            (not 0 < s.top_p <= 1, "top_p must be in (0, 1]"),
            (not 0 <= s.min_p <= 1, "min_p must be in [0, 1]"),
            (s.repetition_penalty <= 0, "repetition_penalty must be > 0"),
        ]
        errors = [message for failed, message in problems if failed]
        if errors:
            raise ValueError("; ".join(errors))


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenEvent:
    token_id: int
    text: str  # may be "" while a multi-byte character is incomplete (byte-level BPE)
    logprob: float  # the model's log P(token), before penalty, temperature and filters
    top_logprobs: tuple[TopLogprob, ...] = ()  # the request's top_logprobs most likely


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # every token generated, a stop string's included

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """How a request ended. `text` is the concatenated text of `tokens`, without the stop
    string; `tokens` are the events the stream delivered."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    tokens: tuple[TokenEvent, ...]


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 64  # sequences decoded together
    max_waiting: int = 256  # requests queued beyond that before submit raises QueueFullError
    window_keep: int | None = None  # GPT tokens kept on re-prefill; None: half of block_size
    # torch.compile the GPT decode step: about twice the single-stream speed on CPU, for a
    # start() that takes some 20 s longer (needs a C++ compiler on CPU)
    compile_decode: bool = False


class Stream:
    """The tokens of one request, as an async iterator; made by `Engine.submit`.

    Iterating yields TokenEvents (none if the request's `stream_tokens` is False) and stops
    when the request ends; `completion` is then set.
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
        self.queue: asyncio.Queue[TokenEvent | Completion | BaseException] = asyncio.Queue()
        self.held_back: Completion | BaseException | None = None  # see ready_tokens
        self.cancel_requested = False  # read by the decode thread at each step
        self.cancel_signal = cancel_signal  # tells the decode thread to look

    def cancel(self) -> None:
        if not self.cancel_requested and self.completion is None:
            self.cancel_requested = True
            self.cancel_signal.set()

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


@dataclass(eq=False)
class RequestState:
    """Engine-thread state of one request."""

    stream: Stream
    generator: torch.Generator
    decoder: IncrementalDecoder
    submitted_at: float
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # all generated text, including held-back text
    delivered_chars: int = 0  # text[:delivered_chars] went out in delivered events
    held: list[TokenEvent] = field(default_factory=list)  # may be the start of a stop string
    delivered: list[TokenEvent] = field(default_factory=list)
    last_token_at: float = 0.0

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request


# Events of one step, handed to the event loops together at its end.
Outbox = list[tuple[RequestState, TokenEvent | Completion | BaseException]]
# An outbox's items for one event loop, by stream.
Deliveries = list[tuple[Stream, TokenEvent | Completion | BaseException]]


class Engine:
    """Continuous-batching generation for one model; see the module docstring."""

    def __init__(
        self,
        model: GPT | BigramLanguageModel,
        tokenizer: Tokenizer,
        config: EngineConfig = EngineConfig(),
    ):
        if config.max_running < 1 or config.max_waiting < 0:
            raise ValueError("max_running must be >= 1 and max_waiting >= 0")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = EngineMetrics()
        self.vocab_size = tokenizer.vocab_size
        self.device = next(model.parameters()).device
        self.runner = make_runner(
            model, config.max_running, config.window_keep, config.compile_decode
        )
        # (max_running, V): tokens already in each row's sequence, for the repetition penalty
        self.seen = torch.zeros(
            config.max_running, self.vocab_size, dtype=torch.bool, device=self.device
        )
        self.rows: list[RequestState] = []  # row i of the batch; touched by the decode thread only
        self.batch_params: BatchParams | None = None  # rebuilt when rows join or leave
        self.top_logprobs = 0  # the most alternatives any row asks for; rebuilt likewise
        self.waiting: deque[RequestState] = deque()
        self.lock = threading.Condition()  # guards `waiting`, `accepting`, `stopping`
        self.cancel_signal = threading.Event()
        self.accepting = False
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.token_texts: dict[int, str] = {}  # for top_logprobs

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, config: EngineConfig = EngineConfig()):
        return cls(checkpoint.model, checkpoint.tokenizer, config)

    # -- the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode thread (after compiling the decode step, if configured)."""
        if self.thread is not None:
            raise RuntimeError("the engine was already started")
        with torch.inference_mode():
            self.runner.warm_up()
        self.accepting = True
        self.thread = threading.Thread(target=self.run, name="engine-decode", daemon=True)
        self.thread.start()

    def stop(self, drain: bool = False, timeout: float | None = None) -> None:
        """Refuse new requests, then finish (drain) or cancel what is queued and running, and
        join the decode thread. Blocks: from async code use `await asyncio.to_thread(...)`."""
        with self.lock:
            self.accepting = False
            self.stopping = True
            if not drain:
                for state in [*self.waiting, *self.rows]:
                    state.stream.cancel_requested = True
                self.cancel_signal.set()
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout)

    def submit(self, request: GenerationRequest) -> Stream:
        """Queue a request; call from the event loop that will read the stream.

        Raises QueueFullError at once when no slot and no queue place is free, EngineClosedError
        when the engine is not running, ValueError for token ids outside the vocabulary."""
        if any(not 0 <= t < self.vocab_size for t in request.prompt_ids):
            raise ValueError(f"prompt_ids must be token ids in 0..{self.vocab_size - 1}")
        stream = Stream(request, asyncio.get_running_loop(), self.cancel_signal)
        state = RequestState(
            stream=stream,
            generator=seeded_generator(request.seed),
            decoder=IncrementalDecoder(self.tokenizer.decode),
            submitted_at=time.perf_counter(),
        )
        with self.lock:
            if not self.accepting:
                raise EngineClosedError("the engine is not running")
            free_rows = self.config.max_running - len(self.rows)
            if len(self.waiting) >= self.config.max_waiting + max(0, free_rows):
                self.metrics.requests_rejected += 1
                raise QueueFullError(
                    f"{len(self.rows)} requests running and {len(self.waiting)} waiting"
                )
            self.waiting.append(state)
            self.metrics.waiting = len(self.waiting)
            self.lock.notify()
        return stream

    # -- the decode thread ------------------------------------------------------------------

    def run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.lock:
                    while not (self.rows or self.waiting or self.stopping):
                        self.lock.wait()
                    if self.stopping and not (self.rows or self.waiting):
                        return
                outbox: Outbox = []
                try:
                    self.step(outbox)
                except Exception as err:
                    logger.exception("decode step failed")
                    self.fail_all(EngineError(f"generation failed: {err}"), outbox)
                finally:
                    self.deliver(outbox)

    def step(self, outbox: Outbox) -> None:
        """Admit, advance every row by one token, sample, and queue the events in `outbox`."""
        if self.cancel_signal.is_set():
            self.cancel_signal.clear()
            self.retire_cancelled(outbox)
        running = len(self.rows)
        joining = self.admit(outbox)
        if not self.rows:
            return
        parts = []
        if running:
            parts.append(self.runner.advance([s.token_ids[-1] for s in self.rows[:running]]))
        if joining:
            parts.append(self.runner.start([list(s.request.prompt_ids) for s in joining]))
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        token_ids, logprobs, tops = self.sample(logits)

        now = time.perf_counter()
        finished: list[int] = []
        for row, state in enumerate(self.rows):
            reason = self.accept(state, token_ids[row], logprobs[row], tops, row, now, outbox)
            if reason is not None:
                self.finish(state, reason, outbox)
                finished.append(row)
        self.remove_rows(finished)
        self.metrics.tokens_generated += len(token_ids)
        self.metrics.decode_steps += 1

    def admit(self, outbox: Outbox) -> list[RequestState]:
        """Move waiting requests into free rows; returns those that joined."""
        joining = []
        with self.lock:
            while self.waiting and len(self.rows) < self.config.max_running:
                state = self.waiting.popleft()
                if state.stream.cancel_requested:
                    self.finish(state, "cancelled", outbox)
                    continue
                row = len(self.rows)
                self.rows.append(state)
                joining.append(state)
                self.seen[row].zero_()
                prompt = torch.tensor(state.request.prompt_ids, device=self.device)
                self.seen[row, prompt] = True
            self.metrics.waiting = len(self.waiting)
        if joining:
            self.batch_params = None
            self.metrics.running = len(self.rows)
        return joining

    def sample(self, logits: torch.Tensor) -> tuple[list[int], list[float], TopCandidates | None]:
        """Next token of every row, its log-probability, and the most likely tokens with their
        log-probabilities if any row asked for them."""
        n = logits.size(0)
        if self.batch_params is None:
            params = [s.request.sampling for s in self.rows]
            self.batch_params = BatchParams.stack(params, self.device)
            self.top_logprobs = max(s.request.top_logprobs for s in self.rows)
        generators = [s.generator for s in self.rows]
        ids = sample_batch(logits, self.batch_params, generators, self.seen[:n])
        if self.batch_params.penalizing:
            self.seen[torch.arange(n, device=self.device), ids] = True
        logprobs = logits.float().log_softmax(dim=-1)  # (n, V), the model's own distribution
        chosen = logprobs.gather(1, ids[:, None])[:, 0].nan_to_num_(LOGPROB_FLOOR, 0, LOGPROB_FLOOR)
        tops = None
        if self.top_logprobs:
            values, indices = logprobs.topk(self.top_logprobs, dim=-1)  # (n, k)
            values = values.nan_to_num_(LOGPROB_FLOOR, 0, LOGPROB_FLOOR)
            tops = (indices.tolist(), values.tolist())
        return ids.tolist(), chosen.tolist(), tops

    def token_text(self, token_id: int) -> str:
        text = self.token_texts.get(token_id)
        if text is None:
            text = self.token_texts[token_id] = self.tokenizer.token_text(token_id)
        return text

    def accept(
        self,
        state: RequestState,
        token_id: int,
        logprob: float,
        tops: TopCandidates | None,
        row: int,
        now: float,
        outbox: Outbox,
    ) -> FinishReason | None:
        """Record a new token, queue the events that are ready; returns why the request
        ends, if it does."""
        request = state.request
        if state.token_ids:
            self.metrics.inter_token_latency.observe(now - state.last_token_at)
        else:
            self.metrics.time_to_first_token.observe(now - state.submitted_at)
        state.last_token_at = now
        state.token_ids.append(token_id)
        delta = state.decoder.push(token_id)
        alternatives: tuple[TopLogprob, ...] = ()
        if request.top_logprobs:
            assert tops is not None  # computed whenever a request in the batch asks for them
            k = request.top_logprobs
            top_ids, top_logprobs = tops[0][row][:k], tops[1][row][:k]
            alternatives = tuple(
                TopLogprob(i, self.token_text(i), lp)
                for i, lp in zip(top_ids, top_logprobs, strict=True)
            )
        state.held.append(TokenEvent(token_id, delta, logprob, alternatives))
        state.text += delta
        ready = len(state.text)
        if request.stop:
            stop_at = find_stop(state.text, request.stop, len(delta))
            if stop_at is not None:
                state.text = state.text[:stop_at]
                self.release(state, stop_at, outbox, cut=True)
                return "stop"
            ready -= partial_stop_length(state.text, request.stop)
        self.release(state, ready, outbox)
        if len(state.token_ids) >= request.max_new_tokens:
            return "length"
        return None

    def release(self, state: RequestState, upto: int, outbox: Outbox, cut: bool = False) -> None:
        """Deliver held events whose text ends by character `upto`; with `cut`, also the part
        of a straddling event before `upto`, and drop the rest."""
        while state.held:
            event = state.held[0]
            end = state.delivered_chars + len(event.text)
            if end > upto:
                if not cut:
                    return
                keep = upto - state.delivered_chars
                if keep > 0:
                    self.deliver_event(state, replace(event, text=event.text[:keep]), outbox)
                state.held.clear()
                return
            state.held.pop(0)
            state.delivered_chars = end
            self.deliver_event(state, event, outbox)

    def deliver_event(self, state: RequestState, event: TokenEvent, outbox: Outbox) -> None:
        state.delivered.append(event)
        if state.request.stream_tokens:
            outbox.append((state, event))

    def finish(self, state: RequestState, reason: FinishReason, outbox: Outbox) -> None:
        if reason != "stop":
            self.release(state, len(state.text), outbox)
        completion = Completion(
            text="".join(e.text for e in state.delivered),
            finish_reason=reason,
            usage=Usage(len(state.request.prompt_ids), len(state.token_ids)),
            tokens=tuple(state.delivered),
        )
        outbox.append((state, completion))
        self.metrics.count_finished(reason)

    def retire_cancelled(self, outbox: Outbox) -> None:
        with self.lock:
            for state in [s for s in self.waiting if s.stream.cancel_requested]:
                self.waiting.remove(state)
                self.finish(state, "cancelled", outbox)
            self.metrics.waiting = len(self.waiting)
        cancelled = [row for row, s in enumerate(self.rows) if s.stream.cancel_requested]
        for row in cancelled:
            self.finish(self.rows[row], "cancelled", outbox)
        self.remove_rows(cancelled)

    def remove_rows(self, rows: list[int]) -> None:
        """Free the rows; the last row moves into each freed one, so rows stay packed."""
        for row in sorted(rows, reverse=True):
            last = len(self.rows) - 1
            self.runner.remove(row)
            if row != last:
                self.rows[row] = self.rows[last]
                self.seen[row] = self.seen[last]
            self.rows.pop()
        if rows:
            self.batch_params = None
            self.metrics.running = len(self.rows)

    def fail_all(self, error: EngineError, outbox: Outbox) -> None:
        """End every running request with `error` and empty the batch: the failed step may
        have left the rows half-updated. (A request that finished earlier in the step keeps
        its Completion, which is queued first.)"""
        outbox.extend((state, error) for state in self.rows)
        self.metrics.requests_failed += len(self.rows)
        self.rows.clear()
        self.runner.clear()
        self.batch_params = None
        self.metrics.running = 0

    def deliver(self, outbox: Outbox) -> None:
        """Hand this step's events to their event loops: one wake-up per loop per step."""
        by_loop: dict[asyncio.AbstractEventLoop, Deliveries] = {}
        for state, item in outbox:
            by_loop.setdefault(state.stream.loop, []).append((state.stream, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for stream, _ in items:
                    stream.cancel_requested = True
                self.cancel_signal.set()


def put_all(items: Deliveries) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)
