"""Text to token ids and back."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.registry import ModelRegistry
from service.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)


class TokenizationController(Controller):
    path = "/v1"
    tags = ["tokenization"]

    @post("/tokenize", operation_id="tokenize", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def tokenize(
        self, data: JSONBody[TokenizeRequest], registry: NamedDependency[ModelRegistry]
    ) -> TokenizeResponse:
        """Split text into a model's tokens and their ids."""
        return registry.tokenize(data)

    @post("/detokenize", operation_id="detokenize", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def detokenize(
        self, data: JSONBody[DetokenizeRequest], registry: NamedDependency[ModelRegistry]
    ) -> DetokenizeResponse:
        """Turn a model's token ids back into text."""
        return registry.detokenize(data)
