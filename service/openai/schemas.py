"""Request and response bodies of the OpenAI-compatible routes: `/v1/completions`,
`/v1/chat/completions` and `/v1/embeddings`.

The shapes follow OpenAI's API, so its official client and the tools built on it work
unchanged. Fields OpenAI defines that these models cannot honour are accepted when they ask
for nothing (their neutral value) and refused with a 400 otherwise; any other unknown field is
a 400 too.
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
    TokenId,
    TopK,
    TopP,
)

MAX_LOGPROBS = 5
MAX_CHOICES = 16
MAX_LOGIT_BIAS = 1024  # tokens one request may bias
MAX_CHAT_MESSAGES = 64

# A prompt (or an embedding input): a text, a list of texts, a list of token ids (one prompt),
# or a list of lists of token ids. msgspec unions hold one list type, so the list's items are
# a union; a list that mixes kinds is refused when the request is served.
PromptItem = str | TokenId | Annotated[list[TokenId], Meta(min_length=1)]
Prompt = Annotated[
    str | Annotated[list[PromptItem], Meta(min_length=1)],
    Meta(
        description="a text, a list of texts, a list of token ids (one prompt), or a list of "
        "lists of token ids"
    ),
]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
LogitBias = Annotated[
    dict[str, Annotated[float, Meta(ge=-100, le=100)]],
    Meta(
        max_length=MAX_LOGIT_BIAS,
        description="token id (a string of digits, as OpenAI's) -> bias added to its logit "
        "before sampling; -100 bans a token, 100 all but forces it",
    ),
]


class StreamOptions(RequestBody):
    include_usage: Annotated[
        bool, Meta(description="send a last chunk with `usage` (and no choices) before [DONE]")
    ] = False


class SamplingFields(RequestBody):
    """What completions and chat completions share: how each choice is sampled."""

    model: ModelId
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    n: Annotated[int, Meta(ge=1, le=MAX_CHOICES, description="choices per prompt")] | None = 1
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
    presence_penalty: (
        Annotated[Penalty, Meta(description="subtracted from a token's logit once generated")]
        | None
    ) = None
    frequency_penalty: (
        Annotated[
            Penalty, Meta(description="subtracted from a token's logit per time it was generated")
        ]
        | None
    ) = None
    logit_bias: LogitBias | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    # This server's extras, as in POST /v1/generate.
    top_k: TopK | None = None
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0


class CompletionRequest(SamplingFields):
    prompt: Prompt = ""
    max_tokens: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=MAX_COUNT,
                description="tokens to generate per choice (default 16); 0 with `echo` scores "
                "the prompt without generating",
            ),
        ]
        | None
    ) = 16
    logprobs: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=MAX_LOGPROBS,
                description="report each token's log-probability and this many most likely "
                "alternatives. These are the model's own log-probabilities, before temperature, "
                "top_k/top_p/min_p filtering and the penalties",
            ),
        ]
        | None
    ) = None
    echo: (
        Annotated[bool, Meta(description="put the prompt before the completion (and its logprobs)")]
        | None
    ) = False
    best_of: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_CHOICES,
                description="generate this many per prompt (at least n) and return the n with "
                "the highest mean log-probability; not with stream",
            ),
        ]
        | None
    ) = None
    suffix: Annotated[str, Meta(max_length=0, description="only empty")] | None = None


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


FinishReason = Annotated[
    str,
    Meta(
        description="length, stop, timeout (TINYGPT_REQUEST_TIMEOUT), or cancelled (the server "
        "was shutting down)"
    ),
]


class CompletionChoice(msgspec.Struct, kw_only=True):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


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


# -- chat ---------------------------------------------------------------------------------

Role = Literal["system", "user", "assistant"]


class ChatMessage(RequestBody):
    role: Role
    content: str
    name: Annotated[str, Meta(max_length=64)] | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[
        list[ChatMessage],
        Meta(
            min_length=1,
            max_length=MAX_CHAT_MESSAGES,
            description="the conversation, rendered into one prompt by the model's chat template",
        ),
    ]
    max_tokens: (
        Annotated[int, Meta(ge=1, le=MAX_COUNT, description="tokens per choice (default 256)")]
        | None
    ) = None
    max_completion_tokens: (
        Annotated[int, Meta(ge=1, le=MAX_COUNT, description="the same as max_tokens")] | None
    ) = None
    logprobs: (
        Annotated[bool, Meta(description="report each token's log-probability (the model's own)")]
        | None
    ) = False
    top_logprobs: (
        Annotated[int, Meta(ge=0, le=MAX_LOGPROBS, description="alternatives per token")] | None
    ) = None


class ChatTopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(msgspec.Struct, kw_only=True):
    content: list[ChatTokenLogprob]


class ChatReply(msgspec.Struct, kw_only=True):
    role: Literal["assistant"]
    content: str


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int
    message: ChatReply
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class ChatDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


# -- embeddings ---------------------------------------------------------------------------


class EmbeddingRequest(RequestBody):
    model: ModelId
    input: Annotated[
        str | Annotated[list[PromptItem], Meta(min_length=1, max_length=256)],
        Meta(
            description="a text, a list of texts (at most 256), a list of token ids, or a list "
            "of lists of token ids"
        ),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: (
        Annotated[int, Meta(ge=1, le=MAX_COUNT, description="only the model's own vector size")]
        | None
    ) = None
    user: Annotated[str, Meta(max_length=256)] | None = None


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"]
    index: int
    embedding: Annotated[
        list[float] | str,
        Meta(description="the vector; with encoding_format base64, its little-endian float32s"),
    ]


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- errors -------------------------------------------------------------------------------


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(msgspec.Struct, kw_only=True):
    error: OpenAIErrorDetail
