"""Request and response bodies of the HTTP API, as msgspec Structs.

Constraints live in the types, so decoding rejects bad values and the OpenAPI schema shows
them. Limits that depend on the server's settings (the `max_new_tokens` cap, the longest
prompt) and on the model (its vocabulary) are checked by the registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class RequestBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request: an unknown field is an error, not silently ignored."""


class ResponseBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every response: optional fields that do not apply are left out."""


ModelId = Annotated[
    str,
    Meta(
        min_length=1,
        description="id of a loaded model: its checkpoint folder name (see GET /v1/models)",
        examples=["gpt-char"],
    ),
]
StopString = Annotated[str, Meta(min_length=1)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]
MinP = Annotated[
    float, Meta(ge=0, le=1, description="drop tokens less likely than min_p x the top one")
]
RepetitionPenalty = Annotated[
    float, Meta(gt=0, le=10, description="divide the logits of tokens already present (1 = off)")
]


# -- health -------------------------------------------------------------------------------


class Health(ResponseBody):
    status: Literal["ok"]


class Readiness(ResponseBody):
    status: Literal["ready"]
    models: list[str]


# -- models -------------------------------------------------------------------------------


class ModelInfo(ResponseBody):
    id: str
    object: Literal["model"]
    created: Annotated[int, Meta(description="Unix time the checkpoint was made; 0 if unknown")]
    owned_by: str
    kind: Literal["bigram", "gpt"]
    vocab_size: int
    parameters: int
    context_length: Annotated[
        int, Meta(description="tokens of context the model reads (1 for the bigram)")
    ]
    device: str
    metrics: dict[str, Any]
    created_at: str | None = None


class ServerLimits(ResponseBody):
    max_new_tokens: int
    max_prompt_chars: int


class ModelList(ResponseBody):
    """OpenAI's list shape (`object`, `data`), plus this server's `limits`."""

    object: Literal["list"]
    data: list[ModelInfo]
    limits: ServerLimits


# -- generation ---------------------------------------------------------------------------


class GenerateRequest(RequestBody):
    model: ModelId
    prompt: Annotated[
        str, Meta(description="text to continue; empty starts from the model's start token")
    ] = ""
    max_new_tokens: Annotated[
        int, Meta(ge=1, description="tokens to generate, up to the server's cap (default 1024)")
    ] = 200
    temperature: Annotated[float, Meta(ge=0, description="0 means greedy")] = 1.0
    top_k: Annotated[int, Meta(ge=1)] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Annotated[
        Seed | None, Meta(description="same seed and parameters, same text; none = random")
    ] = None
    stop: Annotated[
        StopString | list[StopString],
        Meta(description="generation ends before the first of these strings"),
    ] = []
    stream: Annotated[
        bool,
        Meta(
            description="answer with Server-Sent Events: `token` events, then a `done` event "
            "holding the response object"
        ),
    ] = False


class Usage(ResponseBody):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(ResponseBody):
    model: str
    text: Annotated[str, Meta(description="the completion only, without the prompt")]
    token_ids: list[int]
    finish_reason: Annotated[
        Literal["length", "stop", "cancelled", "timeout"],
        Meta(
            description="cancelled: the server was shutting down; timeout: the request "
            "timeout (TINYGPT_REQUEST_TIMEOUT) ended it"
        ),
    ]
    usage: Usage


class TokenStreamEvent(ResponseBody):
    """The data of one `token` event of a streamed generation."""

    index: int
    id: int
    text: Annotated[str, Meta(description="may be empty while a multi-byte character is split")]


# -- next-token distribution --------------------------------------------------------------


class NextTokenRequest(RequestBody):
    model: ModelId
    context: Annotated[
        str,
        Meta(
            description="text before the next token: the GPT reads its last block_size "
            "tokens, the bigram its last character; empty means the start token"
        ),
    ] = ""
    top_k: (
        Annotated[
            int, Meta(ge=1, description="list only the k most likely tokens; all when absent")
        ]
        | None
    ) = None
    # Bounded below: dividing by a denormal overflows the logits and gives NaN probabilities.
    temperature: Annotated[float, Meta(ge=1e-6, description="divides the logits")] = 1.0


class TokenProbability(ResponseBody):
    token: str
    id: int
    prob: float
    logprob: float
    empirical_prob: Annotated[
        float | None,
        Meta(description="bigram only: add-one smoothed frequency in the training split"),
    ] = None


class NextTokenResponse(ResponseBody):
    model: str
    context: str
    distribution: list[TokenProbability]
    entropy: Annotated[float, Meta(description="of the whole distribution, in nats")]


# -- embedding neighbours -----------------------------------------------------------------

Metric = Literal["cosine", "dot", "euclidean"]


class NeighboursRequest(RequestBody):
    model: ModelId
    token: Annotated[
        str | None, Meta(description="one token of the model; or use positive/negative")
    ] = None
    positive: Annotated[
        list[str], Meta(description="analogy: tokens whose unit vectors are added")
    ] = []
    negative: Annotated[
        list[str], Meta(description="analogy: tokens whose unit vectors are subtracted")
    ] = []
    k: Annotated[int, Meta(ge=1)] = 10
    metric: Annotated[
        Metric, Meta(description="analogies rank by cosine; euclidean lists nearest first")
    ] = "cosine"


class NeighbourQuery(ResponseBody):
    metric: Metric
    token: str | None = None
    positive: list[str] = []
    negative: list[str] = []


class Neighbour(ResponseBody):
    token: str
    id: int
    score: Annotated[
        float, Meta(description="cosine similarity, dot product, or euclidean distance")
    ]


class NeighboursResponse(ResponseBody):
    model: str
    query: NeighbourQuery
    neighbours: list[Neighbour]


# -- tokenization -------------------------------------------------------------------------


class TokenizeRequest(RequestBody):
    model: ModelId
    text: str


class TokenizeResponse(ResponseBody):
    model: str
    ids: list[int]
    tokens: list[str]


class DetokenizeRequest(RequestBody):
    model: ModelId
    ids: list[Annotated[int, Meta(ge=0)]]


class DetokenizeResponse(ResponseBody):
    model: str
    text: str


# -- errors -------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    error: ErrorDetail


# -- playground pictures ------------------------------------------------------------------


class BigramTable(ResponseBody):
    model: str
    tokens: Annotated[list[str], Meta(description="token i's text; row and column i are token i")]
    probs: Annotated[
        list[list[float]], Meta(description="probs[i][j]: the learned P(next = j | current = i)")
    ]
    empirical: Annotated[
        list[list[float]] | None,
        Meta(description="add-one smoothed P(j | i) of the training split; null if unrecorded"),
    ]


class EmbeddingPoint(ResponseBody):
    token: str
    id: int
    x: float
    y: float


class EmbeddingProjection(ResponseBody):
    model: str
    method: Literal["pca"]
    explained_variance: Annotated[
        list[float], Meta(description="share of the total variance along x and along y")
    ]
    points: list[EmbeddingPoint]
