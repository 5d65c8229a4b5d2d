"""Route handlers, one Controller per concern."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from service.schemas import ErrorResponse

ERROR_DESCRIPTIONS = {
    400: "Invalid request; `error.param` names the field at fault",
    401: "Missing or unknown API key (`Authorization: Bearer <key>`)",
    403: "The key may not use this endpoint, or the endpoint is switched off",
    404: "Unknown model; the message lists the loaded ones",
    413: "The request body is larger than the server's limit (64 KiB)",
    503: "The models are still loading, or the model's queue is full (see `Retry-After`)",
}


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
