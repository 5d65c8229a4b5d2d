"""Text generation."""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.controllers import MODEL_ERRORS
from service.metrics import GENERATED_TOKENS, PROMPT_TOKENS
from service.registry import ModelRegistry
from service.schemas import GenerateRequest, GenerateResponse


class GenerationController(Controller):
    path = "/v1"
    tags = ["generation"]

    @post("/generate", operation_id="generate", status_code=HTTP_200_OK, responses=MODEL_ERRORS)
    async def generate(
        self, data: JSONBody[GenerateRequest], registry: NamedDependency[ModelRegistry]
    ) -> GenerateResponse:
        """Continue a prompt by sampling from a model; the same seed gives the same text."""
        result = await registry.generate(data)
        GENERATED_TOKENS.labels(model=result.model).inc(result.usage.completion_tokens)
        PROMPT_TOKENS.labels(model=result.model).inc(result.usage.prompt_tokens)
        return result
