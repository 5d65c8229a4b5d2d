"""OpenAI's error envelope `{"error": {"message", "type", "param", "code"}}` for its routes."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from service.errors import (
    ERROR_DESCRIPTIONS,
    http_error_handler,
    service_error_handler,
    unexpected_error_handler,
)
from service.exceptions import ServiceError
from service.openai.schemas import OpenAIErrorDetail, OpenAIErrorResponse
from service.schemas import ErrorResponse

# The routes that answer in OpenAI's envelope, also for errors raised before routing (the rate
# limiter's 429).
OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
OPENAI_ERROR_CODES = {404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


def openai_error_handler(request: Request, exc: Exception) -> Response[OpenAIErrorResponse]:
    """The service's error, rewrapped in OpenAI's envelope (same status, message and param)."""
    if isinstance(exc, ServiceError):
        native = service_error_handler(request, exc)
    elif isinstance(exc, HTTPException):
        native = http_error_handler(request, exc)
    else:
        native = unexpected_error_handler(request, exc)
    status: int = native.status_code or 500
    detail = native.content.error if isinstance(native.content, ErrorResponse) else None
    return Response(
        openai_error(status, detail.message if detail else "error", detail),
        status_code=status,
        headers=native.headers,
    )


def on_openai_routes(native: ExceptionHandlersMap) -> ExceptionHandlersMap:
    """The app's handlers, answering in OpenAI's envelope on the OpenAI routes."""

    def handler_for(fallback: Any) -> Any:
        def handle(request: Request, exc: Exception) -> Response:
            if request.url.path in OPENAI_PATHS:
                return openai_error_handler(request, exc)
            return fallback(request, exc)

        return handle

    return {kind: handler_for(fallback) for kind, fallback in native.items()}


def openai_error(status: int, message: str, detail: object = None) -> OpenAIErrorResponse:
    """The envelope for `status`; `detail` (the service's ErrorDetail) gives param and type."""
    param = getattr(detail, "param", None)
    native_type = getattr(detail, "type", None)
    if status == 404 and param != "model":
        code: str | None = "not_found"
    else:
        code = OPENAI_ERROR_CODES.get(status) or native_type
    error_type = OPENAI_ERROR_TYPES.get(status) or ("server_error" if status >= 500 else None)
    return OpenAIErrorResponse(
        error=OpenAIErrorDetail(
            message=message, type=error_type or native_type or "error", param=param, code=code
        )
    )


def openai_error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses of an OpenAI route, in OpenAI's envelope."""
    return {
        code: ResponseSpec(
            OpenAIErrorResponse, description=ERROR_DESCRIPTIONS[code], generate_examples=False
        )
        for code in status_codes
    }
