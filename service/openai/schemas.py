"""Request and response bodies of the OpenAI-compatible routes (`POST /v1/completions`).

The shapes follow OpenAI's legacy Completions API, so its official client and the tools built
on it work unchanged. Fields OpenAI defines that these models cannot honour are accepted when
they ask for nothing (their neutral value) and refused with a 400 otherwise; any other unknown
field is a 400 too.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from service.schemas import (
    MAX_COUNT,
    MinP,
    ModelId,
    RepetitionPenalty,
    RequestBody,
    StopString,
    StopStrings,
    Temperature,
    TopK,
    TopP,
)

MAX_LOGPROBS = 5


class StreamOptions(RequestBody):
    include_usage: Annotated[
        bool, Meta(description="send a last chunk with `usage` (and no choices) before [DONE]")
    ] = False


class CompletionRequest(RequestBody):
    model: ModelId
    prompt: Annotated[
        str | Annotated[list[str], Meta(min_length=1)],
        Meta(description="text to continue, or a list of texts (choices are prompt-major)"),
    ] = ""
    max_tokens: (
        Annotated[
            int, Meta(ge=1, le=MAX_COUNT, description="tokens to generate per choice (default 16)")
        ]
        | None
    ) = 16
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    n: Annotated[int, Meta(ge=1, le=16, description="choices per prompt")] | None = 1
    stop: (
        Annotated[
            StopString | StopStrings,
            Meta(description="up to 4 strings; generation ends before the first of them"),
        ]
        | None
    ) = None
    seed: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=2**63 - 1,
                description="same seed and parameters, same text; choice i samples with seed + i",
            ),
        ]
        | None
    ) = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=MAX_LOGPROBS,
                description="report each token's log-probability and this many most likely "
                "alternatives. These are the model's own log-probabilities, before temperature, "
                "top_k/top_p/min_p filtering and the repetition penalty",
            ),
        ]
        | None
    ) = None
    echo: (
        Annotated[bool, Meta(description="put the prompt before the completion (and its logprobs)")]
        | None
    ) = False
    user: Annotated[str, Meta(max_length=256)] | None = None
    # This server's extras, as in POST /v1/generate.
    top_k: TopK | None = None
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    # OpenAI's, accepted only at their neutral values.
    # The schema says which values those are, so a client learns it before sending.
    frequency_penalty: (
        Annotated[float, Meta(ge=0, le=0, description="only 0; see repetition_penalty")] | None
    ) = None
    presence_penalty: (
        Annotated[float, Meta(ge=0, le=0, description="only 0; see repetition_penalty")] | None
    ) = None
    best_of: Annotated[int, Meta(ge=1, le=1, description="only 1 (ignored)")] | None = None
    logit_bias: Annotated[dict[str, float], Meta(max_length=0, description="only empty")] | None = (
        None
    )
    suffix: Annotated[str, Meta(max_length=0, description="only empty")] | None = None


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: (
        Annotated[
            str,
            Meta(
                description="length, stop, timeout (TINYGPT_REQUEST_TIMEOUT), or cancelled "
                "(the server was shutting down)"
            ),
        ]
        | None
    )


class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
    system_fingerprint: str | None = None


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(msgspec.Struct, kw_only=True):
    error: OpenAIErrorDetail
