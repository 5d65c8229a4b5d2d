"""Text to token ids and back."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.exceptions import InvalidRequestError
from service.limits import check_text_length
from service.registry import ModelRegistry
from service.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from service.settings import Settings


class TokenizationController(Controller):
    path = "/"
    tags = ["tokenization"]

    @post("/tokenize", operation_id="tokenize", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def tokenize(
        self,
        data: JSONBody[TokenizeRequest],
        registry: NamedDependency[ModelRegistry],
        settings: NamedDependency[Settings],
    ) -> TokenizeResponse:
        """Split text into a model's tokens and their ids."""
        model = registry.get(data.model)
        check_text_length(settings, data.text, "text")
        ids = model.encode(data.text, "text")
        tokens = [model.tokenizer.token_text(i) for i in ids]
        return TokenizeResponse(model=model.id, ids=ids, tokens=tokens)

    @post("/detokenize", operation_id="detokenize", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def detokenize(
        self, data: JSONBody[DetokenizeRequest], registry: NamedDependency[ModelRegistry]
    ) -> DetokenizeResponse:
        """Turn a model's token ids back into text."""
        model = registry.get(data.model)
        for position, token_id in enumerate(data.ids):
            if token_id >= model.vocab_size:
                raise InvalidRequestError(
                    f"`ids[{position}]` is {token_id}, but model {model.id!r} has token ids "
                    f"0 to {model.vocab_size - 1}",
                    param=f"ids[{position}]",
                )
        return DetokenizeResponse(model=model.id, text=model.tokenizer.decode(data.ids))
