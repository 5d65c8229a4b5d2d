"""Looking inside a model: next-token distributions, token-vector neighbours, and a GPT's
forward pass (attention weights, the logit lens)."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.exceptions import InvalidRequestError
from service.inspection import Inspector, query_spellings
from service.limits import check_text_length
from service.loaded_model import LoadedModel
from service.registry import ModelRegistry
from service.schemas import (
    AttentionRequest,
    AttentionResponse,
    LogitLensRequest,
    LogitLensResponse,
    Metric,
    NeighbourQuery,
    NeighboursRequest,
    NeighboursResponse,
    NextTokenRequest,
    NextTokenResponse,
)
from service.settings import Settings


def text_ids(settings: Settings, model: LoadedModel, text: str, param: str) -> list[int]:
    """The ids of a text the model reads, within this server's length limit; the start token
    if it is empty."""
    check_text_length(settings, text, param)
    return model.prompt_ids(text, param)


def query_tokens(model: LoadedModel, data: NeighboursRequest) -> tuple[list[int], list[int]]:
    """The ids of a neighbours query: one token, or an analogy's positive and negative."""
    analogy = bool(data.positive or data.negative)
    if data.token is not None and analogy:
        raise InvalidRequestError(
            "give either `token` or `positive`/`negative` (an analogy), not both", param="token"
        )
    if data.token is None and not analogy:
        raise InvalidRequestError(
            "give a `token` to find its neighbours, or `positive`/`negative` token lists "
            "for an analogy",
            param="token",
        )
    if analogy and data.metric not in (None, "cosine"):
        raise InvalidRequestError(
            "analogies rank by cosine similarity; leave `metric` out or set it to cosine",
            param="metric",
        )
    if data.token is not None:
        return [model.token_id(data.token, "token")], []
    positive = [model.token_id(token, f"positive[{i}]") for i, token in enumerate(data.positive)]
    negative = [model.token_id(token, f"negative[{i}]") for i, token in enumerate(data.negative)]
    return positive, negative


def query_metric(model: LoadedModel, data: NeighboursRequest) -> Metric:
    """What a neighbours query ranks by: the metric asked for, else the model's default,
    Jensen-Shannon for one token of a bigram (its table rows are next-token distributions)
    and cosine for anything else."""
    if data.metric is None:
        return "jensen_shannon" if model.kind == "bigram" and data.token is not None else "cosine"
    if data.metric == "jensen_shannon" and model.kind != "bigram":
        raise InvalidRequestError(
            "jensen_shannon compares next-token distributions, which a bigram's token vectors "
            f"(its table rows) are; model {model.id!r} is a {model.kind}, whose token vectors "
            "are embeddings: use cosine, dot or euclidean",
            param="metric",
        )
    return data.metric


class InspectionController(Controller):
    path = "/"
    tags = ["inspection"]

    @post("/next-token", operation_id="nextToken", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def next_token(
        self,
        data: JSONBody[NextTokenRequest],
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        settings: NamedDependency[Settings],
    ) -> NextTokenResponse:
        """Give the model's probability for every possible next token, most likely first."""
        model = registry.get(data.model)
        context_ids = text_ids(settings, model, data.context, "context")
        distribution, entropy = await inspector.next_token(
            model, context_ids, data.temperature, data.top_k
        )
        return NextTokenResponse(
            model=model.id, context=data.context, distribution=distribution, entropy=entropy
        )

    @post("/neighbours", operation_id="neighbours", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def neighbours(
        self,
        data: JSONBody[NeighboursRequest],
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
    ) -> NeighboursResponse:
        """Find the tokens whose vectors are nearest a token or an analogy's query."""
        model = registry.get(data.model)
        positive, negative = query_tokens(model, data)
        metric = query_metric(model, data)
        excluded = query_spellings(model, positive + negative) if data.exclude_query else []
        neighbours = await inspector.neighbours(model, positive, negative, metric, data.k, excluded)
        query = NeighbourQuery(
            token=data.token,
            positive=data.positive,
            negative=data.negative,
            metric=metric,
            exclude_query=data.exclude_query,
        )
        return NeighboursResponse(
            model=model.id,
            query=query,
            neighbours=neighbours,
            excluded=[model.tokenizer.token_text(i) for i in excluded],
        )

    @post("/attention", operation_id="attention", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def attention(
        self,
        data: JSONBody[AttentionRequest],
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        settings: NamedDependency[Settings],
    ) -> AttentionResponse:
        """Give a GPT's attention weights over a text's tokens, for every layer and head."""
        model = registry.get(data.model)
        return await inspector.attention(model, text_ids(settings, model, data.text, "text"))

    @post("/logit-lens", operation_id="logitLens", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def logit_lens(
        self,
        data: JSONBody[LogitLensRequest],
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        settings: NamedDependency[Settings],
    ) -> LogitLensResponse:
        """Give a GPT's most likely next tokens read off every layer at every position."""
        model = registry.get(data.model)
        ids = text_ids(settings, model, data.text, "text")
        return await inspector.logit_lens(model, ids, data.top_k)
