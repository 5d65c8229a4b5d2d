"""The loaded models and what they are."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from service.controllers import ModelIdPath, error_responses
from service.registry import ModelRegistry
from service.schemas import ModelInfo, ModelList, ServerLimits
from service.settings import Settings


class ModelsController(Controller):
    path = "/models"
    tags = ["models"]

    @get(operation_id="listModels", responses=error_responses(503))
    async def list_models(
        self, registry: NamedDependency[ModelRegistry], settings: NamedDependency[Settings]
    ) -> ModelList:
        """List the loaded models with their training metrics, and this server's limits."""
        limits = ServerLimits(
            max_new_tokens=settings.max_new_tokens,
            max_prompt_chars=settings.max_prompt_chars,
            max_request_sequences=settings.max_request_sequences,
            max_client_sequences=settings.max_client_sequences,
        )
        return ModelList(object="list", data=registry.describe(), limits=limits)

    @get("/{model_id:str}", operation_id="retrieveModel", responses=error_responses(404, 503))
    async def retrieve_model(
        self, model_id: ModelIdPath, registry: NamedDependency[ModelRegistry]
    ) -> ModelInfo:
        """Describe one loaded model (what the OpenAI client's `models.retrieve` asks for)."""
        return registry.get(model_id, "model_id").describe()
