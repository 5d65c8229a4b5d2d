"""What goes into the engine (a GenerationRequest) and what comes out (events, a Completion)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from models.sampling import SamplingParams

MAX_TOP_LOGPROBS = 5
LOGPROB_FLOOR = -9999.0  # stands in for -inf (and NaN) log-probabilities: JSON has neither

FinishReason = Literal["length", "stop", "timeout", "cancelled"]


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue has no room: try again later (HTTP 503)."""


class EngineClosedError(RuntimeError):
    """The engine is not running: not started yet, or stopped."""


class EngineError(RuntimeError):
    """Generation failed: the model or the device failed, and every running request ends
    with this; or (RequestFailedError) one request's own work failed, and it ends alone."""


class RequestFailedError(EngineError):
    """This request alone failed; the other requests in its batch were not affected."""


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
    # Seconds from submission after which the request ends with finish_reason "timeout"
    # (what was produced is kept); None: no limit
    timeout: float | None = None

    def __post_init__(self) -> None:
        s = self.sampling
        floats = (
            s.temperature,
            s.top_p,
            s.min_p,
            s.repetition_penalty,
            s.presence_penalty,
            s.frequency_penalty,
            *(bias for _, bias in s.logit_bias),
            self.timeout or 0.0,
        )
        problems = [
            (not self.prompt_ids, "prompt_ids must not be empty"),
            (self.max_new_tokens < 1, "max_new_tokens must be at least 1"),
            (not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs must be in 0..5"),
            (any(not stop for stop in self.stop), "stop strings must not be empty"),
            (not all(map(math.isfinite, floats)), "sampling parameters must be finite"),
            (s.temperature < 0, "temperature must be >= 0"),
            (s.top_k is not None and s.top_k < 0, "top_k must be >= 0"),
            (not 0 < s.top_p <= 1, "top_p must be in (0, 1]"),
            (not 0 <= s.min_p <= 1, "min_p must be in [0, 1]"),
            (s.repetition_penalty <= 0, "repetition_penalty must be > 0"),
            (self.timeout is not None and self.timeout <= 0, "timeout must be > 0"),
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


@dataclass(frozen=True, slots=True)
class Completion:
    """How a request ended. `text` is the concatenated text of `tokens`, without the stop
    string; `tokens` are the events the stream delivered."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    tokens: tuple[TokenEvent, ...]
