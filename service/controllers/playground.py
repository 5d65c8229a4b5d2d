"""The playground page at `/`, its static files, and the two pictures only it asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from litestar import Controller, Router, get
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import File
from litestar.static_files import create_static_files_router

from service.controllers import ModelIdPath, error_responses
from service.exceptions import InvalidRequestError
from service.inspection import Inspector
from service.projections import TableWindow
from service.registry import ModelRegistry
from service.schemas import (
    DEFAULT_EMBEDDING_POINTS,
    MAX_EMBEDDING_POINTS,
    MAX_TABLE_SIDE,
    BigramTable,
    EmbeddingProjection,
    TokenOrder,
)

# No vocabulary comes near this; it only keeps the numbers in the schema finite.
MAX_TOKEN_ID = 2**31 - 1


def token_position(description: str) -> Any:
    """A query parameter naming a token (by id or rank): what the model has is checked later.
    The minimum is written out too: Litestar leaves a bound of 0 out of an optional one."""
    return Parameter(ge=0, le=MAX_TOKEN_ID, schema_extra={"minimum": 0}, description=description)


TableStart = Annotated[
    int | None,
    token_position(
        "rank in `order` of this side's first token (default 0); below the model's vocab_size"
    ),
]
TableSide = Annotated[
    int,
    Parameter(
        ge=1,
        le=MAX_TABLE_SIDE,
        description=f"tokens along this side (fewer at the end), at most {MAX_TABLE_SIDE}",
    ),
]
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page loads only its own files: the browser refuses anything from another origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


class PlaygroundController(Controller):
    path = "/models"
    tags = ["inspection"]

    @get(
        "/{model_id:str}/bigram-table",
        operation_id="bigramTable",
        responses=error_responses(400, 404, 503),
    )
    async def bigram_table(
        self,
        model_id: ModelIdPath,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        order: Annotated[
            TokenOrder | None,
            Parameter(
                description="how tokens are ranked along both sides: `id`, or `frequency` "
                f"(most frequent first); default `id` when the whole table fits "
                f"({MAX_TABLE_SIDE} tokens or fewer), else `frequency`"
            ),
        ] = None,
        row_start: TableStart = None,
        col_start: TableStart = None,
        rows: TableSide = MAX_TABLE_SIDE,
        cols: TableSide = MAX_TABLE_SIDE,
        focus: Annotated[
            int | None,
            token_position(
                "a token id: serve the window (of `rows` x `cols`, on the grid of multiples "
                "of each) that holds it on both sides, instead of `row_start`/`col_start`"
            ),
        ] = None,
    ) -> BigramTable:
        """Give a window of a bigram's table P(next | current), learned and empirical."""
        model = registry.get(model_id, "model_id")
        if model.kind != "bigram":
            bigrams = [m.id for m in registry.loaded_models().values() if m.kind == "bigram"]
            hint = f"; the bigram models here: {', '.join(bigrams)}" if bigrams else ""
            raise InvalidRequestError(
                f"model {model.id!r} is a {model.kind} model, and only bigram models have a "
                f"table of P(next | current){hint}",
                param="model_id",
            )
        window = TableWindow(order, row_start, col_start, rows, cols, focus)
        return await inspector.bigram_table(model, window)

    @get(
        "/{model_id:str}/embeddings",
        operation_id="tokenEmbeddings",
        responses=error_responses(400, 404, 503),
    )
    async def embeddings(
        self,
        model_id: ModelIdPath,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        offset: Annotated[
            int, token_position("token id of the first point; below the model's vocab_size")
        ] = 0,
        limit: Annotated[
            int,
            Parameter(
                ge=1,
                le=MAX_EMBEDDING_POINTS,
                description=f"points to serve (fewer at the end), at most {MAX_EMBEDDING_POINTS}",
            ),
        ] = DEFAULT_EMBEDDING_POINTS,
    ) -> EmbeddingProjection:
        """Project all token vectors onto their first two principal axes; serve a page of them."""
        model = registry.get(model_id, "model_id")
        return await inspector.embedding_projection(model, offset, limit)


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
