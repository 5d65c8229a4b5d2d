"""The generation engine: continuous batching of many requests per model, in a thread of its
own. `core` schedules and runs the decode steps, `runners` hold the model side (KV cache,
prefill, one-token decode), `text` turns tokens into streamed text and stop strings,
`stream` is a request's reading end, `request` the types that cross in and out, `metrics`
its Prometheus numbers."""

from service.engine.core import Engine, EngineConfig
from service.engine.request import (
    LOGPROB_FLOOR,
    MAX_TOP_LOGPROBS,
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
from service.engine.stream import Stream

__all__ = [
    "LOGPROB_FLOOR",
    "MAX_TOP_LOGPROBS",
    "Completion",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "FinishReason",
    "GenerationRequest",
    "QueueFullError",
    "RequestFailedError",
    "Stream",
    "TokenEvent",
    "TopLogprob",
    "Usage",
]
