"""One error shape for every failure: `{"error": {"message", "type", "param"}}`.

Covers the service's own errors, Litestar's (validation, 404, 405, 413) and anything
unexpected, which becomes a 500 whose details go to the log, never into the response.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ExceptionHandlersMap

from service.exceptions import (
    ClientBusyError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidRequestError,
    NotReadyError,
    NotRecordedError,
    OverloadedError,
    ServiceError,
    UnknownModelError,
)
from service.schemas import ErrorDetail, ErrorResponse
from service.settings import MAX_BODY_BYTES

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_error",
    503: "not_ready",
    504: "timeout",
}

# What each error status means, for the OpenAPI document.
ERROR_DESCRIPTIONS = {
    400: "Invalid request; `error.param` names the field at fault",
    401: "Missing or unknown API key (`Authorization: Bearer <key>`)",
    403: "The key may not use this endpoint, or the endpoint is switched off",
    404: "Unknown model (the message lists the loaded ones), or one whose checkpoint lacks "
    "what was asked about (a training timeline)",
    413: "The request body is larger than the server's limit (64 KiB)",
    429: "Too many requests, or too many sequences generating for this client (`Retry-After`)",
    500: "Generation failed on the server's side; the message says what failed",
    503: "The models are still loading, or the model's queue is full (see `Retry-After`)",
    504: "The request timeout (TINYGPT_REQUEST_TIMEOUT) passed before any token was generated",
}

SERVICE_ERROR_STATUS: dict[type[ServiceError], int] = {
    InvalidRequestError: HTTP_400_BAD_REQUEST,
    UnknownModelError: HTTP_404_NOT_FOUND,
    NotRecordedError: HTTP_404_NOT_FOUND,
    NotReadyError: HTTP_503_SERVICE_UNAVAILABLE,
    OverloadedError: HTTP_503_SERVICE_UNAVAILABLE,
    ClientBusyError: HTTP_429_TOO_MANY_REQUESTS,
    GenerationFailedError: HTTP_500_INTERNAL_SERVER_ERROR,
    GenerationTimeoutError: 504,
}


def error_response(
    status_code: int,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    error_type: str | None = None,
) -> Response[ErrorResponse]:
    default_type = "invalid_request" if status_code < 500 else "error"
    error_type = error_type or ERROR_TYPES.get(status_code, default_type)
    body = ErrorResponse(error=ErrorDetail(message=message, type=error_type, param=param))
    return Response(body, status_code=status_code, headers=headers)


def service_error_handler(_: Request, exc: ServiceError) -> Response[ErrorResponse]:
    status_code = next(
        status for error, status in SERVICE_ERROR_STATUS.items() if isinstance(exc, error)
    )
    if isinstance(exc, OverloadedError | ClientBusyError):
        headers = {"retry-after": str(exc.retry_after_seconds)}
        kind = "overloaded" if isinstance(exc, OverloadedError) else "too_many_sequences"
        return error_response(status_code, exc.message, exc.param, headers, kind)
    if isinstance(exc, GenerationFailedError):
        return error_response(status_code, exc.message, exc.param, error_type="generation_failed")
    return error_response(status_code, exc.message, exc.param)


def http_error_handler(request: Request, exc: HTTPException) -> Response[ErrorResponse]:
    """Litestar's own errors, reworded so that a person knows what to change."""
    endpoint = f"{request.method} {request.url.path}"
    if isinstance(exc, ValidationException):
        problems = exc.extra if isinstance(exc.extra, list) else []
        keys = [p.get("key") for p in problems if isinstance(p, dict) and p.get("key")]
        details = "; ".join(
            f"`{p['key']}`: {p.get('message')}" if p.get("key") else str(p.get("message"))
            for p in problems
            if isinstance(p, dict)
        )
        return error_response(exc.status_code, details or exc.detail, keys[0] if keys else None)
    if isinstance(exc, NotFoundException):
        message = f"{endpoint} is not an endpoint of this server; the endpoints are listed at /docs"
        return error_response(exc.status_code, message)
    if isinstance(exc, MethodNotAllowedException):
        allowed = (exc.headers or {}).get("allow", "")
        message = f"{endpoint} is not allowed; this path accepts {allowed or 'other methods'}"
        return error_response(exc.status_code, message, headers=exc.headers)
    if isinstance(exc, RequestEntityTooLarge):
        message = (
            f"the request body is larger than the limit of {MAX_BODY_BYTES // 1024} KiB; "
            "send a smaller body"
        )
        return error_response(exc.status_code, message)
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        return unexpected_error_handler(request, exc)
    return error_response(exc.status_code, exc.detail, headers=exc.headers)


def unexpected_error_handler(request: Request, exc: Exception) -> Response[ErrorResponse]:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    message = (
        f"internal error while serving {request.method} {request.url.path}; "
        "the server log has the details"
    )
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, message)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ServiceError: service_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
