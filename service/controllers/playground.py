"""The playground page at `/`, its static files, and the two pictures only it asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from litestar import Controller, Router, get
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.response import File
from litestar.static_files import create_static_files_router

from service.controllers import error_responses
from service.registry import ModelRegistry
from service.schemas import BigramTable, EmbeddingProjection

ModelIdPath = Annotated[str, PathParameter(description="id of a loaded model (see GET /v1/models)")]
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page loads only its own files: the browser refuses anything from another origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


class PlaygroundController(Controller):
    path = "/v1/models"
    tags = ["inspection"]

    @get(
        "/{model_id:str}/bigram-table",
        operation_id="bigramTable",
        responses=error_responses(400, 404, 503),
    )
    async def bigram_table(
        self, model_id: ModelIdPath, registry: NamedDependency[ModelRegistry]
    ) -> BigramTable:
        """Give a bigram model's whole table of P(next | current), learned and empirical."""
        return await registry.bigram_table(model_id)

    @get(
        "/{model_id:str}/embeddings",
        operation_id="tokenEmbeddings",
        responses=error_responses(404, 503),
    )
    async def embeddings(
        self, model_id: ModelIdPath, registry: NamedDependency[ModelRegistry]
    ) -> EmbeddingProjection:
        """Project a model's token vectors onto their first two principal axes (PCA)."""
        return await registry.embedding_projection(model_id)


@get("/", include_in_schema=False, sync_to_thread=False)
def playground_page() -> File:
    """The playground: generate, and look at next-token odds, the bigram table, embeddings."""
    return File(
        STATIC_DIR / "index.html",
        filename="index.html",
        media_type="text/html",
        content_disposition_type="inline",
        headers=PAGE_HEADERS,
    )


playground_static_files: Router = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    name="playground-static",
    cache_control=None,
    include_in_schema=False,
)
