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

# jensen_shannon compares next-token distributions: what a bigram's table rows are.
Metric = Literal["cosine", "dot", "euclidean", "jensen_shannon"]


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
        Metric | None,
        Meta(
            description="default: jensen_shannon for one token of a bigram (the distance "
            "between the next-token distributions of its rows; bigrams only), cosine otherwise. "
            "Analogies rank by cosine; euclidean and jensen_shannon list nearest first"
        ),
    ] = None
    exclude_query: Annotated[
        bool,
        Meta(
            description="leave the query's own tokens out of the results, as gensim's "
            "most_similar does, and with them each one's spelling with or without a leading "
            "space (`man` and ` man` of a subword vocabulary); false ranks every token"
        ),
    ] = True


class NeighbourQuery(ResponseBody):
    metric: Metric
    token: str | None = None
    positive: list[str] = []
    negative: list[str] = []
    exclude_query: bool = True


class Neighbour(ResponseBody):
    token: str
    id: int
    score: Annotated[
        float,
        Meta(
            description="cosine similarity, dot product, euclidean distance, or "
            "Jensen-Shannon distance (base 2: 0 for the same distribution, 1 for disjoint ones)"
        ),
    ]


class NeighboursResponse(ResponseBody):
    model: str
    query: NeighbourQuery
    neighbours: list[Neighbour]
    excluded: Annotated[
        list[str],
        Meta(description="the tokens left out of `neighbours` (see `exclude_query`)"),
    ] = []


# -- inside one forward pass --------------------------------------------------------------

# The most numbers one response holds: a GPT with more layers and heads (an imported GPT-2)
# reads fewer of the text's last tokens than its context, so that a response stays bounded.
MAX_ATTENTION_WEIGHTS = 2**20  # layers x heads x tokens x tokens
MAX_LENS_TOP_K = 20
MAX_LENS_PREDICTIONS = 2**16  # (layers + 1) x tokens x top_k

ForwardPassText = Annotated[
    str,
    Meta(
        description="text the GPT reads; empty means the start token. It reads the last "
        "block_size tokens, as /v1/next-token does (fewer for a model of so many layers and "
        "heads that the response would pass its bound); `skipped_tokens` counts the rest"
    ),
]


class ForwardPassResponse(ResponseBody):
    """The tokens a GPT read: those of the text, less the `skipped_tokens` before them."""

    model: str
    tokens: list[str]
    ids: list[int]
    skipped_tokens: Annotated[
        int,
        Meta(description="tokens at the start of the text left out: more than the model reads"),
    ]


class AttentionRequest(RequestBody):
    model: ModelId
    text: ForwardPassText = ""


class AttentionLayer(ResponseBody):
    layer: Annotated[
        int, Meta(description="the block, 0 the first; it reads the logit lens's layer `layer`")
    ]
    heads: Annotated[
        list[list[list[float]]],
        Meta(
            description="heads[h][i][j]: the weight head h gives position j when computing "
            "position i; 0 for j > i (causal), and each row sums to 1"
        ),
    ]


class AttentionResponse(ForwardPassResponse):
    n_layer: int
    n_head: int
    layers: list[AttentionLayer]


class LogitLensRequest(RequestBody):
    model: ModelId
    text: ForwardPassText = ""
    top_k: Annotated[
        int, Meta(ge=1, le=MAX_LENS_TOP_K, description="tokens to list at each layer and position")
    ] = 5


class LensLayer(ResponseBody):
    layer: Annotated[
        int,
        Meta(
            description="blocks applied: 0 the embeddings, n_layer the model's output (its "
            "last position is /v1/next-token's distribution)"
        ),
    ]
    predictions: Annotated[
        list[list[TokenProbability]],
        Meta(
            description="predictions[t]: the top_k next tokens after tokens[0..t] read off "
            "this layer's residual stream through the final LayerNorm and the head, most "
            "likely first"
        ),
    ]


class LogitLensResponse(ForwardPassResponse):
    layers: list[LensLayer]


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


# -- the training timeline ----------------------------------------------------------------

# A timeline request asks about at most this many tokens (in this many characters, commas
# included), and lists each one's neighbours at every step.
MAX_TIMELINE_TOKENS = 8
MAX_TIMELINE_QUERY_CHARS = 256
DEFAULT_TIMELINE_NEIGHBOURS = 8
MAX_TIMELINE_NEIGHBOURS = 20


class TimelineStep(ResponseBody):
    """One recorded step: the sampled losses the trainer logged there, and for a bigram how
    far its table was from the training split's."""

    step: int
    train_loss: float
    val_loss: float
    tv_mean: Annotated[
        float | None,
        Meta(
            description="bigram: total variation distance of each row from the add-one "
            "smoothed empirical row, averaged over rows (0 to 1)"
        ),
    ] = None
    tv_weighted: Annotated[
        float | None,
        Meta(description="bigram: the same, weighted by how often each row's token occurs"),
    ] = None
    kl: Annotated[
        float | None,
        Meta(
            description="bigram: frequency-weighted KL divergence (nats) of the empirical rows "
            "from the model's: the full-pass training loss less the count-based optimum"
        ),
    ] = None


class TimelineFrame(ResponseBody):
    """The recorded tokens' map at one step: x[r], y[r] place token ids[r]."""

    step: int
    explained_variance: Annotated[
        list[float], Meta(description="share of this step's variance along its two axes")
    ]
    x: list[float]
    y: list[float]


class TimelineNeighbours(ResponseBody):
    token: str
    id: int
    steps: Annotated[
        list[list[Neighbour]],
        Meta(description="steps[s]: its nearest recorded tokens at the response's steps[s]"),
    ]


class TrainingTimeline(ResponseBody):
    model: str
    kind: Literal["bigram", "gpt"]
    vocab_size: int
    checkpoint_step: Annotated[
        int | None,
        Meta(description="the step whose weights the checkpoint holds (the best val loss)"),
    ]
    ids: Annotated[
        list[int],
        Meta(
            description="the tokens recorded: the whole vocabulary up to 256 tokens (by id), "
            "else the 256 most frequent in the training split"
        ),
    ]
    tokens: list[str]
    steps: Annotated[
        list[TimelineStep], Meta(description="step 0 and evaluations, thinned evenly to 30")
    ]
    frames: Annotated[
        list[TimelineFrame],
        Meta(
            description="one per step: the token vectors (GPT: embedding rows; bigram: the "
            "square roots of its rows of P(next | current)) on each step's own two principal "
            "axes, turned onto the next step's by orthogonal Procrustes, so that all steps "
            "share the last one's frame"
        ),
    ]
    neighbours: Annotated[
        list[TimelineNeighbours],
        Meta(
            description="for each token of `tokens`: its neighbours at each step, among the "
            "recorded tokens, ranked as /v1/neighbours does by default (GPT: cosine; bigram: "
            "Jensen-Shannon distance, nearest first)"
        ),
    ] = []


class TimelineTable(ResponseBody):
    """A bigram's table at one recorded step, for the recorded tokens on both sides."""

    model: str
    step: int
    ids: list[int]
    tokens: list[str]
    probs: Annotated[
        list[list[float]],
        Meta(description="probs[r][c]: the model's P(next = ids[c] | current = ids[r]) then"),
    ]
    empirical: Annotated[
        list[list[float]] | None,
        Meta(description="add-one smoothed P(j | i) of the training split; null if unrecorded"),
    ]
