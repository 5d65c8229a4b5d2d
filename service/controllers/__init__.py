"""Route handlers, one Controller per concern."""

from __future__ import annotations

from typing import Annotated

from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from service.errors import ERROR_DESCRIPTIONS
from service.schemas import ErrorResponse

ModelIdPath = Annotated[str, PathParameter(description="id of a loaded model (see GET /v1/models)")]


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a handler answers with, in the one error shape."""
    return {
        code: ResponseSpec(
            ErrorResponse, description=ERROR_DESCRIPTIONS[code], generate_examples=False
        )
        for code in status_codes
    }


# Every handler using this takes a JSON body, hence the 413.
MODEL_ERRORS = error_responses(400, 404, 413, 503)
