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
# Bounds of every number a request may carry: none can overflow a 64-bit integer or make a
# model's arithmetic produce inf or NaN. Limits that depend on the server's settings (the
# `max_new_tokens` cap) or on the model (its vocabulary) are checked when the request is served.
MAX_COUNT = 2**31 - 1  # tokens to generate, k: far above any setting or vocabulary
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 128
MAX_QUERY_TOKENS = 16  # tokens of an analogy, on each side

StopString = Annotated[str, Meta(min_length=1, max_length=MAX_STOP_CHARS)]
StopStrings = Annotated[list[StopString], Meta(max_length=MAX_STOP_STRINGS)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Temperature = Annotated[
    float,
    Meta(ge=0, le=100, description="0 means greedy; a temperature below 1e-6 is taken as 1e-6"),
]
TopK = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_COUNT,
        description="keep the k most likely tokens; k at or above the vocabulary size keeps all",
    ),
]
TopP = Annotated[float, Meta(gt=0, le=1)]
MinP = Annotated[
    float, Meta(ge=0, le=1, description="drop tokens less likely than min_p x the top one")
]
RepetitionPenalty = Annotated[
    float,
    Meta(ge=0.01, le=10, description="divide the logits of tokens already present (1 = off)"),
]
TokenCount = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
TokenId = Annotated[int, Meta(ge=0, le=MAX_COUNT)]


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
    max_request_sequences: Annotated[
        int, Meta(description="sequences (prompts x n) one request may generate")
    ]
    max_client_sequences: Annotated[
        int, Meta(description="sequences one client may have generating or queued at once")
    ]


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
        TokenCount, Meta(description="tokens to generate, up to the server's cap (default 1024)")
    ] = 200
    temperature: Temperature = 1.0
    top_k: TopK | None = None
    top_p: TopP = 1.0
    min_p: MinP = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Annotated[
        Seed | None, Meta(description="same seed and parameters, same text; none = random")
    ] = None
    stop: Annotated[
        StopString | StopStrings,
        Meta(description="generation ends before the first of these strings (up to 4)"),
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
            int,
            Meta(
                ge=1,
                le=MAX_COUNT,
                description="list only the k most likely tokens; all when absent or larger",
            ),
        ]
        | None
    ) = None
    # Bounded below: dividing by a denormal overflows the logits and gives NaN probabilities.
    temperature: Annotated[float, Meta(ge=1e-6, le=100, description="divides the logits")] = 1.0


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
        list[str],
        Meta(
            max_length=MAX_QUERY_TOKENS, description="analogy: tokens whose unit vectors are added"
        ),
    ] = []
    negative: Annotated[
        list[str],
        Meta(
            max_length=MAX_QUERY_TOKENS,
            description="analogy: tokens whose unit vectors are subtracted",
        ),
    ] = []
    k: Annotated[
        int, Meta(ge=1, le=MAX_COUNT, description="neighbours to list; more lists every token")
    ] = 10
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
    ids: list[TokenId]


class DetokenizeResponse(ResponseBody):
    model: str
    text: str


# -- admin ------------------------------------------------------------------------------


class RefusedCheckpoint(ResponseBody):
    model: str
    reason: str


class ReloadResponse(ResponseBody):
    reloaded: list[str]
    refused: list[RefusedCheckpoint]
    unchanged: list[str]
    models: Annotated[list[str], Meta(description="every model served after the reload")]


# -- errors -------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    error: ErrorDetail


# -- playground pictures ------------------------------------------------------------------

# One bigram-table response holds at most this many rows and as many columns (65,536 cells).
MAX_TABLE_SIDE = 256
# One embeddings response holds this many points unless `limit` asks for fewer or more.
DEFAULT_EMBEDDING_POINTS = 2048
MAX_EMBEDDING_POINTS = 4096

TokenOrder = Literal["id", "frequency"]


class TableAxis(ResponseBody):
    """The tokens along one side of a bigram-table window: ranks `start` to `start + len - 1`
    of the response's `order`."""

    start: Annotated[int, Meta(description="rank in `order` of this side's first token")]
    ids: Annotated[list[int], Meta(description="the token id at each position, in rank order")]
    tokens: Annotated[list[str], Meta(description="the text of each of those tokens")]
    next: Annotated[
        int | None,
        Meta(description="the start of the next window along this side; null at the last"),
    ]


class BigramTable(ResponseBody):
    """A window of a bigram's table P(next | current): rows are current tokens, columns
    next ones, each side a run of consecutive ranks of `order`."""

    model: str
    vocab_size: Annotated[int, Meta(description="tokens in the vocabulary: ranks 0 to this - 1")]
    order: Annotated[
        TokenOrder,
        Meta(description="id: ranked by token id; frequency: most frequent first (`ranked_by`)"),
    ]
    ranked_by: Annotated[
        Literal["token_id", "training_counts", "stationary_probability"],
        Meta(
            description="what the ranks follow: token ids; how often each token occurs in the "
            "training split; or, when the checkpoint has no counts, the stationary "
            "distribution of the model's own chain"
        ),
    ]
    rows: TableAxis
    cols: TableAxis
    probs: Annotated[
        list[list[float]],
        Meta(description="probs[r][c]: the learned P(next = cols.ids[c] | current = rows.ids[r])"),
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
    total: Annotated[
        int, Meta(description="tokens in the vocabulary, all of which the PCA was fitted on")
    ]
    offset: Annotated[int, Meta(description="token id of the first point")]
    next_offset: Annotated[
        int | None,
        Meta(
            description="`offset` of the next page; null when the points run to the last "
            "token. Ids outside offset to offset + len(points) - 1 are left out"
        ),
    ]
    points: Annotated[list[EmbeddingPoint], Meta(description="consecutive token ids")]
