"""Looking inside a model: next-token distributions and token-vector neighbours."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.exceptions import InvalidRequestError
from service.inspection import Inspector
from service.limits import check_text_length
from service.loaded_model import LoadedModel
from service.registry import ModelRegistry
from service.schemas import (
    NeighbourQuery,
    NeighboursRequest,
    NeighboursResponse,
    NextTokenRequest,
    NextTokenResponse,
)
from service.settings import Settings


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
    if analogy and data.metric != "cosine":
        raise InvalidRequestError(
            "analogies rank by cosine similarity; leave `metric` out or set it to cosine",
            param="metric",
        )
    if data.token is not None:
        return [model.token_id(data.token, "token")], []
    positive = [model.token_id(token, f"positive[{i}]") for i, token in enumerate(data.positive)]
    negative = [model.token_id(token, f"negative[{i}]") for i, token in enumerate(data.negative)]
    return positive, negative


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
        check_text_length(settings, data.context, "context")
        context_ids = model.prompt_ids(data.context, "context")
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
        neighbours = await inspector.neighbours(model, positive, negative, data.metric, data.k)
        query = NeighbourQuery(
            token=data.token, positive=data.positive, negative=data.negative, metric=data.metric
        )
        return NeighboursResponse(model=model.id, query=query, neighbours=neighbours)
