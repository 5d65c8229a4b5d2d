"""Looking inside a model: next-token distributions and token-vector neighbours."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.registry import ModelRegistry
from service.schemas import (
    NeighboursRequest,
    NeighboursResponse,
    NextTokenRequest,
    NextTokenResponse,
)


class InspectionController(Controller):
    path = "/v1"
    tags = ["inspection"]

    @post("/next-token", operation_id="nextToken", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def next_token(
        self, data: JSONBody[NextTokenRequest], registry: NamedDependency[ModelRegistry]
    ) -> NextTokenResponse:
        """Give the model's probability for every possible next token, most likely first."""
        return await registry.next_token(data)

    @post("/neighbours", operation_id="neighbours", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def neighbours(
        self, data: JSONBody[NeighboursRequest], registry: NamedDependency[ModelRegistry]
    ) -> NeighboursResponse:
        """Find the tokens whose vectors are nearest a token or an analogy's query."""
        return await registry.neighbours(data)
