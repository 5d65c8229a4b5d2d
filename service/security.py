"""Access and limits: API-key and admin-key guards, per-client rate limiting, CORS.

Keys are compared in constant time (`hmac.compare_digest`) against every configured key and
are never logged; a refusal logs only the method and path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.exceptions.http_exceptions import TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.types import Guard, Receive, Scope, Send

from service.settings import Settings, SettingsError

log = logging.getLogger(__name__)

BEARER_CHALLENGE = {"www-authenticate": "Bearer"}


def split_keys(text: str) -> list[str]:
    return [key.strip() for key in text.split(",") if key.strip()]


def api_keys(settings: Settings) -> list[str]:
    """`TINYGPT_API_KEYS` plus the lines of `TINYGPT_API_KEY_FILE` (blank and # lines skipped)."""
    keys = split_keys(settings.api_keys)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise SettingsError(
                f"invalid setting api_key_file={settings.api_key_file!r} "
                f"(TINYGPT_API_KEY_FILE): cannot read it: {err.strerror or err}"
            ) from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return keys


def bearer_token(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, keys: Iterable[str]) -> bool:
    """Constant time in the token: every key is compared, no early exit."""
    if token is None:
        return False
    given = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


API_KEY_DETAIL = (
    "this endpoint needs an API key: send `Authorization: Bearer <key>` with one of the keys "
    "in TINYGPT_API_KEYS or TINYGPT_API_KEY_FILE"
)
ADMIN_KEY_DETAIL = (
    "this endpoint needs an admin key: send `Authorization: Bearer <key>` with one of the keys "
    "in TINYGPT_ADMIN_KEYS"
)


def require_bearer(
    connection: ASGIConnection, keys: Sequence[str], *, kind: str, detail: str
) -> None:
    """401 (`WWW-Authenticate: Bearer`, `detail`) unless the connection sends
    `Authorization: Bearer <one of keys>`. The token is compared against every key in constant
    time; a refusal logs the method and path, never the token."""
    token = bearer_token(connection.headers)
    if key_matches(token, keys):
        return
    log.warning(
        "refused %s %s: %s %s",
        connection.scope.get("method", "WEBSOCKET"),  # a websocket scope has no method
        connection.url.path,
        "no" if token is None else "an unknown",
        kind,
    )
    raise NotAuthorizedException(detail=detail, headers=dict(BEARER_CHALLENGE))


def api_key_guard(keys: Sequence[str]) -> Guard:
    """The guard of the `/v1` routes (and of `/docs` when TINYGPT_PROTECT_DOCS is on): a
    valid `Authorization: Bearer <key>`. Guards run inside the route, so an unknown path is a
    404 (not a 401) and the route's own exception handlers shape the 401 (OpenAI's envelope
    on /v1/completions). A closure, so that no repr shows the keys."""
    keys = tuple(keys)

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        # OPTIONS carries no credentials: a CORS preflight is answered by the CORS middleware
        # before any route; a plain OPTIONS gets Litestar's `Allow` answer, as before guards.
        if connection.scope.get("method") == "OPTIONS":
            return
        require_bearer(connection, keys, kind="API key", detail=API_KEY_DETAIL)

    return guard


def api_key_guards(settings: Settings) -> list[Guard]:
    """`[api_key_guard]` when API keys are configured, else none (the routes are open)."""
    keys = api_keys(settings)
    return [api_key_guard(keys)] if keys else []


def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Admin routes: 403 while no admin key is configured, 401 without a valid one."""
    settings: Settings = connection.app.state.settings
    keys = split_keys(settings.admin_keys)
    if not keys:
        raise PermissionDeniedException(
            detail="admin endpoints are off: set TINYGPT_ADMIN_KEYS (comma-separated) and send "
            "`Authorization: Bearer <admin key>`"
        )
    require_bearer(connection, keys, kind="admin key", detail=ADMIN_KEY_DETAIL)


# -- rate limiting ------------------------------------------------------------------------


def client_key(connection: ASGIConnection) -> str:
    """Who a request comes from, for per-client limits: its API key (hashed, so it is not
    kept as is) when keys are on, else its peer address. Keys count only when they are
    checked, and a forwarded-for header only when a proxy is trusted to set it (none is), so
    a client cannot pass as another by what it sends."""
    settings: Settings = connection.app.state.settings
    token = bearer_token(connection.headers)
    if token is not None and api_keys_configured(settings):
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    client = connection.client
    return "addr:" + (client.host if client else "unknown")


def api_keys_configured(settings: Settings) -> bool:
    return bool(settings.api_keys.strip() or settings.api_key_file)


class RetryAfterRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's rate limiter, whose 429 also says `Retry-After` (seconds to the reset)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except TooManyRequestsException as exc:
            if exc.headers is None or "retry-after" in {k.lower() for k in exc.headers}:
                raise
            headers = dict(exc.headers)
            reset = headers.get(self.config.rate_limit_reset_header_key, "1")
            retry = max(1, int(reset)) if str(reset).lstrip("-").isdigit() else 1
            raise TooManyRequestsException(
                detail=f"rate limit of {self.max_requests} requests per {self.unit} exceeded "
                f"for this client (TINYGPT_RATE_LIMIT); retry after {retry} s",
                headers={**headers, "retry-after": str(retry)},
            ) from None


def parse_rate_limit(text: str) -> tuple[Any, int]:
    count, _, unit = text.partition("/")
    return unit, int(count)


def rate_limit_middleware(settings: Settings) -> DefineMiddleware | None:
    if not settings.rate_limit:
        return None
    config = RateLimitConfig(
        rate_limit=parse_rate_limit(settings.rate_limit),
        exclude=[r"^/health$", r"^/ready$", r"^/metrics$"],
        identifier_for_request=client_key,
        middleware_class=RetryAfterRateLimitMiddleware,
    )
    return config.middleware


def cors_config(settings: Settings) -> CORSConfig | None:
    origins = split_keys(settings.cors_origins)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type"],
        expose_headers=["retry-after"],
    )
