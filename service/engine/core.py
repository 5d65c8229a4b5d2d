"""The engine's core: one decode loop per model, many requests decoded together.

A dedicated thread owns the model. Each step it advances every running sequence by one token
in a single batched forward pass, admits waiting requests into free rows (prefilling their
prompts), samples all rows at once, and retires the sequences that are done. Requests therefore
join and leave at step boundaries (continuous batching): a long request never holds up a short
one.

A failure is kept to the request that caused it. Requests are checked before they are queued;
if a request's prefill or sampling still fails, it is retried alone and only the request that
fails alone ends (with RequestFailedError), while the others go on with exactly the tokens they
would have had. Only a failed forward pass of the running batch (the model's or the device's
fault) ends every running request; the engine then starts over with an empty batch and keeps
serving.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from models.bigram import BigramLanguageModel
from models.gpt import GPT
from models.sampling import BatchParams, sample_batch, seeded_generator
from models.tokenizer import TextTokenizer
from service.engine.metrics import EngineMetrics
from service.engine.request import (
    LOGPROB_FLOOR,
    Completion,
    EngineClosedError,
    EngineError,
    FinishReason,
    GenerationRequest,
    QueueFullError,
    RequestFailedError,
    TokenEvent,
    TopLogprob,
    Usage,
)
from service.engine.runners import make_runner
from service.engine.stream import Stream, StreamItem
from service.engine.text import IncrementalDecoder, StopChecker

logger = logging.getLogger(__name__)

TopCandidates = tuple[list[list[int]], list[list[float]]]  # per row: ids, logprobs (best first)
# Uniforms each row draws from its generator at a time: one block per this many tokens, so
# that a step does not call every row's generator.
UNIFORMS_AHEAD = 64


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 64  # sequences decoded together
    max_waiting: int = 256  # sequences queued beyond that before submit raises QueueFullError
    window_keep: int | None = None  # GPT tokens kept on re-prefill; None: half of block_size
    # compile the GPT decode step (ahead of time on CPU, CUDA graphs on CUDA: see runners):
    # about four times the single-stream speed on CPU, after a build of ~30 s the first time
    # (its prefill's too; under a second once the packages are in the cache)
    compile_decode: bool = False
    # the GPT's decode precision (bf16 on CUDA: see service.registry); None: the model's own
    dtype: torch.dtype | None = None
    # Seconds a step's token events may wait to be handed to the event loops together with the
    # next steps' (a first token and a request's end never wait): 0, every step. Each hand-over
    # wakes every stream's reader and writes to its socket, work that holds the GIL the decode
    # thread needs; see service.settings for the measured effect.
    stream_interval: float = 0.0

    @property
    def capacity(self) -> int:
        """The most sequences the engine holds at once, running and waiting."""
        return self.max_running + self.max_waiting


@dataclass(eq=False)
class RequestState:
    """Engine-thread state of one request."""

    stream: Stream
    generator: torch.Generator
    decoder: IncrementalDecoder
    stops: StopChecker
    submitted_at: float
    deadline: float  # time.perf_counter() at which it ends with "timeout"; inf: never
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # all generated text, including held-back text
    delivered_chars: int = 0  # text[:delivered_chars] went out in delivered events
    held: list[TokenEvent] = field(default_factory=list)  # may be the start of a stop string
    delivered: list[TokenEvent] = field(default_factory=list)
    last_token_at: float = 0.0

    @property
    def request(self) -> GenerationRequest:
        return self.stream.request


@dataclass(eq=False)
class Outbox:
    """Items for the event loops, gathered over the steps since the last hand-over."""

    items: list[tuple[RequestState, StreamItem]] = field(default_factory=list)
    # Holds a first token or a request's end: hand it over at once. A request leaves the batch
    # only with its end, so an engine whose batch empties never holds tokens back.
    urgent: bool = False

    def add(self, state: RequestState, item: StreamItem) -> None:
        self.items.append((state, item))
        if not isinstance(item, TokenEvent) or len(state.delivered) == 1:
            self.urgent = True


class Engine:
    """Continuous-batching generation for one model.

    engine = Engine(model, tokenizer, EngineConfig(max_running=64))
    engine.start()
    stream = engine.submit(GenerationRequest(prompt_ids=ids, max_new_tokens=100, seed=1))
    async for event in stream:          # TokenEvent per token
        ...
    stream.completion.finish_reason     # "length" | "stop" | "timeout" | "cancelled"
    engine.stop()
    """

    def __init__(
        self,
        model: GPT | BigramLanguageModel,
        tokenizer: TextTokenizer,
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
            model, config.max_running, config.window_keep, config.compile_decode, config.dtype
        )
        # (max_running, V): tokens already in each row's sequence, for the repetition penalty,
        # and the times each was generated, for the presence and frequency penalties
        self.seen = torch.zeros(
            config.max_running, self.vocab_size, dtype=torch.bool, device=self.device
        )
        self.counts = torch.zeros(config.max_running, self.vocab_size, device=self.device)
        # (max_running, UNIFORMS_AHEAD): each row's next uniforms, from its own generator, and
        # how many of them it has used; `refill_in`: steps before some row may run out.
        self.uniforms = torch.zeros(config.max_running, UNIFORMS_AHEAD, dtype=torch.float64)
        self.uniforms_used = torch.zeros(config.max_running, dtype=torch.long)
        self.refill_in = UNIFORMS_AHEAD
        self.rows: list[RequestState] = []  # row i of the batch; touched by the decode thread only
        self.batch_params: BatchParams | None = None  # rebuilt when rows join or leave
        self.top_logprobs = 0  # the most alternatives any row asks for; rebuilt likewise
        self.waiting: deque[RequestState] = deque()
        self.lock = threading.Condition()  # guards `waiting`, `admitting`, `accepting`, `stopping`
        self.admitting = 0  # taken from `waiting` by the decode thread, not yet in `rows`
        self.cancel_signal = threading.Event()
        self.accepting = False
        self.stopping = False
        self.thread: threading.Thread | None = None
        # Set once the decode thread has warmed up (compiled) and serves; requests submitted
        # before wait in the queue.
        self.warmed = threading.Event()
        self.warm_up_problem: str | None = None  # why a compiled step fell back to eager
        self.token_texts: dict[int, str] = {}  # for top_logprobs
        # The earliest deadline of any request held (or later): a step looks for timed-out
        # requests only once it has passed, not at every step.
        self.next_deadline = float("inf")

    # -- the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode thread, which first warms up (compiles the decode step, if
        configured): requests are accepted at once and wait until then (see `warmed`)."""
        if self.thread is not None:
            raise RuntimeError("the engine was already started")
        if not self.compiled:  # eagerly a warm-up takes milliseconds: a broken model fails here
            with torch.inference_mode():
                self.runner.warm_up()
            self.warmed.set()
        self.accepting = True
        self.thread = threading.Thread(target=self.run, name="engine-decode", daemon=True)
        self.thread.start()

    @property
    def compiled(self) -> bool:
        """Whether the decode step runs compiled (known for sure once `warmed` is set)."""
        return self.runner.compiled

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

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
        """Queue a request; call from the event loop that will read the stream. See
        `submit_all` for what it raises."""
        return self.submit_all([request])[0]

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[Stream]:
        """Queue requests together, all or none: raises QueueFullError at once when they do
        not all fit, EngineClosedError when the engine is not running, ValueError for token
        ids outside the vocabulary."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        states = [self.new_state(self.checked(request), loop, now) for request in requests]
        with self.lock:
            if not self.accepting:
                raise EngineClosedError("the engine is not running")
            # rows being prefilled have left `waiting` but are not in `rows` yet
            free_rows = max(0, self.config.max_running - len(self.rows) - self.admitting)
            room = self.config.max_waiting + free_rows - len(self.waiting)
            if len(states) > room:
                self.metrics.requests_rejected += 1
                raise QueueFullError(
                    f"{len(self.rows)} sequences running and {len(self.waiting)} waiting; "
                    f"room for {max(0, room)} more, {len(states)} asked for"
                )
            self.waiting.extend(states)
            self.next_deadline = min([self.next_deadline, *(s.deadline for s in states)])
            self.metrics.waiting = len(self.waiting)
            self.lock.notify()
        return [state.stream for state in states]

    def checked(self, request: GenerationRequest) -> GenerationRequest:
        """`request` as this model runs it, or ValueError for what it cannot run: everything a
        request brings is checked here, before it can reach a batch."""
        if any(not 0 <= t < self.vocab_size for t in request.prompt_ids):
            raise ValueError(f"prompt_ids must be token ids in 0..{self.vocab_size - 1}")
        bad_bias = [t for t, _ in request.sampling.logit_bias if not 0 <= t < self.vocab_size]
        if bad_bias:
            raise ValueError(
                f"logit_bias names token {bad_bias[0]}, outside this model's ids "
                f"0..{self.vocab_size - 1}"
            )
        top_k = request.sampling.top_k
        if top_k is not None and top_k >= self.vocab_size:
            # keeping at least every token is no filter: off, which is exactly the same
            return replace(request, sampling=replace(request.sampling, top_k=None))
        return request

    def new_state(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, now: float
    ) -> RequestState:
        return RequestState(
            stream=Stream(request, loop, self.cancel_signal),
            generator=seeded_generator(request.seed),
            decoder=IncrementalDecoder(self.tokenizer.decode),
            stops=StopChecker(request.stop),
            submitted_at=now,
            deadline=now + request.timeout if request.timeout is not None else float("inf"),
        )

    # -- the decode thread ------------------------------------------------------------------

    def run(self) -> None:
        with torch.inference_mode():
            if not self.warmed.is_set():
                self.warm_up()
            outbox, due = Outbox(), 0.0  # due: when waiting tokens must be handed over
            while True:
                with self.lock:
                    while not (self.rows or self.waiting or self.stopping):
                        self.lock.wait()
                    if self.stopping and not (self.rows or self.waiting):
                        return
                try:
                    self.step(outbox)
                except Exception as err:
                    logger.exception("decode step failed; ending every running request")
                    self.fail_all(EngineError(f"generation failed: {err}"), outbox)
                finally:
                    now = time.perf_counter()
                    if outbox.urgent or now >= due:
                        self.deliver(outbox)
                        outbox, due = Outbox(), now + self.config.stream_interval

    def warm_up(self) -> None:
        """Compile the decode step in the decode thread, falling back to eager if it fails."""
        started = time.perf_counter()
        try:
            self.warm_up_problem = self.runner.warm_up()
        except Exception:  # even the eager step failed: requests will fail with the reason
            logger.exception("the engine's warm-up failed")
        finally:
            self.warmed.set()
        if self.warm_up_problem:
            logger.warning("%s", self.warm_up_problem)
        elif self.compiled:
            logger.info("decode step compiled in %.1f s", time.perf_counter() - started)

    def step(self, outbox: Outbox) -> None:
        """Advance, admit, sample, and queue the events in `outbox`."""
        now = time.perf_counter()
        if self.cancel_signal.is_set():
            self.cancel_signal.clear()
            self.retire(outbox, lambda s: s.stream.cancel_requested, "cancelled")
        if now >= self.next_deadline:
            self.retire(outbox, lambda s: now >= s.deadline, "timeout")
            with self.lock:
                states = [*self.waiting, *self.rows]
                self.next_deadline = min((s.deadline for s in states), default=float("inf"))
        parts = []
        if self.rows:
            parts.append(self.runner.advance([s.token_ids[-1] for s in self.rows]))
        joined = self.admit(outbox)
        if joined is not None:
            parts.append(joined)
        if not parts:
            return
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        ids, failures = self.sample(logits)
        token_ids = ids.tolist()
        logprobs, tops = self.model_logprobs(logits, ids)

        now = time.perf_counter()
        ended: list[int] = []
        for row, state in enumerate(self.rows):
            failure = failures.get(row)
            if failure is None:
                try:
                    reason = self.accept(
                        state, token_ids[row], logprobs[row], tops, row, now, outbox
                    )
                except Exception as err:
                    failure = err
                else:
                    if reason is not None:
                        self.finish(state, reason, outbox)
                        ended.append(row)
            if failure is not None:
                self.fail(state, failure, outbox)
                ended.append(row)
        self.remove_rows(ended)
        self.metrics.tokens_generated += len(token_ids) - len(failures)
        self.metrics.decode_steps += 1

    def admit(self, outbox: Outbox) -> torch.Tensor | None:
        """Prefill waiting requests into free rows; returns their logits, one row each, or None
        when none joined. A prefill that fails is retried one request at a time, so that only
        a request whose own prefill fails is refused."""
        with self.lock:
            joining: list[RequestState] = []
            while self.waiting and len(self.rows) + len(joining) < self.config.max_running:
                joining.append(self.waiting.popleft())
            self.admitting = len(joining)
            self.metrics.waiting = len(self.waiting)
        if not joining:
            return None
        try:
            return self.prefill(joining, outbox)
        except Exception as err:  # a bug here must not lose requests that left the queue
            for state in joining:
                if state not in self.rows:
                    self.fail(state, err, outbox)
            return None
        finally:
            with self.lock:
                self.admitting = 0

    def prefill(self, joining: list[RequestState], outbox: Outbox) -> torch.Tensor | None:
        first = len(self.rows)
        contexts = [list(s.request.prompt_ids) for s in joining]
        logits: torch.Tensor | None
        try:
            logits = self.runner.start(contexts)
            admitted = joining
        except Exception:
            logger.exception("prefill of %d requests failed; retrying one by one", len(joining))
            self.runner.truncate(first)
            admitted, parts = [], []
            for state, context in zip(joining, contexts, strict=True):
                try:
                    parts.append(self.runner.start([context]))
                except Exception as err:
                    self.runner.truncate(first + len(admitted))
                    self.fail(state, err, outbox)
                else:
                    admitted.append(state)
            logits = torch.cat(parts) if parts else None
        with self.lock:  # `submit_all` counts them either as admitting or in rows, never both
            self.rows.extend(admitted)
            self.admitting -= len(admitted)
        for row, state in enumerate(admitted, start=first):
            self.seen[row].zero_()
            self.seen[row, torch.tensor(state.request.prompt_ids, device=self.device)] = True
            self.counts[row].zero_()
            self.draw_uniforms(row)
        if admitted:
            self.batch_params = None
            self.metrics.running = len(self.rows)
        return logits

    def sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, dict[int, Exception]]:
        """Next token of every row, (n,) ids, and the rows whose sampling failed (their token
        is a placeholder). A failed batch is sampled again row by row: a row's uniform counts
        as used only once its token is chosen, so each row alone gets exactly the token it
        gets in a batch."""
        n = logits.size(0)
        try:
            if self.batch_params is None:
                self.batch_params = BatchParams.stack(
                    [s.request.sampling for s in self.rows], self.device, self.vocab_size
                )
                self.top_logprobs = max(s.request.top_logprobs for s in self.rows)
            params = self.batch_params
            # An all-greedy batch draws on no uniform (each row still uses up one, below).
            u = None if params.all_greedy else self.next_uniforms(n)
            ids = sample_batch(logits, params, u, self.seen[:n], self.counts[:n])
            if params.penalizing or params.counting:
                rows = torch.arange(n, device=self.device)
                if params.penalizing:
                    self.seen[rows, ids] = True
                if params.counting:
                    self.counts[rows, ids] += 1
            failures = dict[int, Exception]()
        except Exception:
            logger.exception("sampling %d rows failed; sampling them one by one", n)
            self.batch_params = None
            ids, failures = self.sample_one_by_one(logits, self.next_uniforms(n))
        self.used_uniforms(n)
        return ids, failures

    def next_uniforms(self, n: int) -> torch.Tensor:
        """The uniform each of rows 0..n-1 draws on this step, (n,) on the model's device."""
        return self.uniforms[:n].gather(1, self.uniforms_used[:n, None])[:, 0].to(self.device)

    def sample_one_by_one(
        self, logits: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, Exception]]:
        token_ids: list[int] = []
        failures: dict[int, Exception] = {}
        for row, state in enumerate(self.rows):
            try:
                params = BatchParams.stack([state.request.sampling], self.device, self.vocab_size)
                seen, counts = self.seen[row : row + 1], self.counts[row : row + 1]
                ids = sample_batch(logits[row : row + 1], params, u[row : row + 1], seen, counts)
                seen[0, ids] = True
                counts[0, ids] += 1
                token_ids.append(int(ids[0]))
            except Exception as err:
                failures[row] = err
                token_ids.append(0)
        self.top_logprobs = max(s.request.top_logprobs for s in self.rows)
        return torch.tensor(token_ids, device=self.device), failures

    def used_uniforms(self, n: int) -> None:
        """Rows 0..n-1 used one uniform each: refill the rows that used their last one."""
        self.uniforms_used[:n] += 1
        self.refill_in -= 1
        if self.refill_in > 0:
            return
        for row in (self.uniforms_used[:n] == UNIFORMS_AHEAD).nonzero()[:, 0].tolist():
            self.draw_uniforms(row)
        self.refill_in = UNIFORMS_AHEAD - int(self.uniforms_used[:n].max())

    def draw_uniforms(self, row: int) -> None:
        generator = self.rows[row].generator
        self.uniforms[row] = torch.rand(UNIFORMS_AHEAD, generator=generator, dtype=torch.float64)
        self.uniforms_used[row] = 0

    def model_logprobs(
        self, logits: torch.Tensor, ids: torch.Tensor
    ) -> tuple[list[float], TopCandidates | None]:
        """The model's log-probability of each row's token `ids` (n,), and its most likely
        tokens if any row asked for them."""
        logprobs = logits.float().log_softmax(dim=-1)  # (n, V), the model's own distribution
        chosen = logprobs.gather(1, ids[:, None])[:, 0].nan_to_num_(LOGPROB_FLOOR, 0, LOGPROB_FLOOR)
        tops = None
        if self.top_logprobs:
            values, indices = logprobs.topk(min(self.top_logprobs, self.vocab_size), dim=-1)
            values = values.nan_to_num_(LOGPROB_FLOOR, 0, LOGPROB_FLOOR)
            tops = (indices.tolist(), values.tolist())
        return chosen.tolist(), tops

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
        stop_at = state.stops.stop_at(state.text, len(delta))
        if stop_at is not None:
            state.text = state.text[:stop_at]
            self.release(state, stop_at, outbox, cut=True)
            return "stop"
        self.release(state, state.stops.releasable(state.text), outbox)
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
            outbox.add(state, event)

    def finish(self, state: RequestState, reason: FinishReason, outbox: Outbox) -> None:
        if reason != "stop":
            self.release(state, len(state.text), outbox)
        completion = Completion(
            text="".join(e.text for e in state.delivered),
            finish_reason=reason,
            usage=Usage(len(state.request.prompt_ids), len(state.token_ids)),
            tokens=tuple(state.delivered),
        )
        outbox.add(state, completion)
        self.metrics.count_finished(reason)

    def fail(self, state: RequestState, err: Exception, outbox: Outbox) -> None:
        """End one request with the error its own work raised; the others go on."""
        logger.error(
            "request failed alone (%s: %s); the rest of its batch goes on", type(err).__name__, err
        )
        message = f"generation of this request failed ({type(err).__name__}: {err})"
        outbox.add(state, RequestFailedError(message))
        self.metrics.requests_failed += 1

    def retire(
        self, outbox: Outbox, ends: Callable[[RequestState], bool], reason: FinishReason
    ) -> None:
        """Finish, with `reason`, the waiting and running requests for which `ends` holds."""
        with self.lock:
            leaving = [s for s in self.waiting if ends(s)]
            for state in leaving:
                self.waiting.remove(state)
                self.finish(state, reason, outbox)
            self.metrics.waiting = len(self.waiting)
        rows = [row for row, s in enumerate(self.rows) if ends(s)]
        for row in rows:
            self.finish(self.rows[row], reason, outbox)
        self.remove_rows(rows)

    def remove_rows(self, rows: list[int]) -> None:
        """Free the rows; the last row moves into each freed one, so rows stay packed."""
        for row in sorted(rows, reverse=True):
            last = len(self.rows) - 1
            self.runner.remove(row)
            if row != last:
                self.rows[row] = self.rows[last]
                self.seen[row] = self.seen[last]
                self.counts[row] = self.counts[last]
                self.uniforms[row] = self.uniforms[last]
                self.uniforms_used[row] = self.uniforms_used[last]
            self.rows.pop()
        if rows:
            self.batch_params = None
            self.metrics.running = len(self.rows)

    def fail_all(self, error: EngineError, outbox: Outbox) -> None:
        """End every running request with `error` and empty the batch: the failed step may
        have left the rows half-updated. (A request that ended earlier in the step keeps its
        Completion, which is queued first.) Waiting requests stay queued."""
        ended = {id(state) for state, item in outbox.items if not isinstance(item, TokenEvent)}
        failed = [state for state in self.rows if id(state) not in ended]
        for state in failed:
            outbox.add(state, error)
        self.metrics.requests_failed += len(failed)
        self.rows.clear()
        self.runner.truncate(0)
        self.batch_params = None
        self.metrics.running = 0

    def deliver(self, outbox: Outbox) -> None:
        """Hand the gathered items to their event loops: one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, StreamItem]]] = {}
        for state, item in outbox.items:
            by_loop.setdefault(state.stream.loop, []).append((state.stream, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for stream, _ in items:
                    stream.cancel_requested = True
                self.cancel_signal.set()


def put_all(items: list[tuple[Stream, StreamItem]]) -> None:
    for stream, item in items:
        stream.put(item)
