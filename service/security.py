"""Access and limits: API-key and admin-key guards, who a client is, per-client rate limiting,
CORS.

Keys are compared in constant time (`hmac.compare_digest`) against every configured key and
are never logged; a refusal logs only the method and path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.exceptions.http_exceptions import TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Guard, Message, Receive, Scope, Send

from service.settings import Settings, SettingsError
from service.shared_limits import LimitStore

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


# -- who a client is ----------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def trusted_networks(text: str) -> tuple[Network, ...]:
    """TINYGPT_TRUSTED_PROXIES: comma-separated addresses or CIDR networks."""
    networks = []
    for entry in split_keys(text):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise SettingsError(
                f"invalid setting trusted_proxies={text!r} (TINYGPT_TRUSTED_PROXIES): "
                f"{entry!r} is neither an IP address nor a network such as 10.0.0.0/8"
            ) from None
    return tuple(networks)


def parsed_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def trusted_hop(hop: str, trusted: Sequence[Network]) -> bool:
    address = parsed_address(hop)
    return address is not None and any(address in network for network in trusted)


def forwarded_client(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The address a request comes from: its peer, unless the peer is a trusted proxy; then
    the X-Forwarded-For hops are read from the nearest (rightmost) back, past the trusted ones,
    and the first other hop is the client. Only a trusted proxy's hops are believed, so what a
    client writes in the header itself never decides who it is."""
    hops = [peer, *(h.strip() for v in reversed(forwarded_for) for h in reversed(v.split(",")))]
    client = next((hop for hop in hops if not trusted_hop(hop, trusted)), hops[-1])
    address = parsed_address(client)
    # Written as Python spells it, so that one address has one spelling.
    return str(address) if address is not None else client


def client_key(connection: ASGIConnection) -> str:
    """Who a request comes from, for per-client limits: its API key (hashed, so it is not
    kept as is) when it sends a valid one, else its address (see `forwarded_client`). A key
    counts only when it is valid, so guessing keys does not buy fresh budgets."""
    settings: Settings = connection.app.state.settings
    keys: tuple[str, ...] = connection.app.state.api_keys
    token = bearer_token(connection.headers)
    if token is not None and keys and key_matches(token, keys):
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    peer = connection.client.host if connection.client else "unknown"
    forwarded = connection.headers.getall("x-forwarded-for", [])
    return "addr:" + forwarded_client(peer, forwarded, trusted_networks(settings.trusted_proxies))


# -- rate limiting ------------------------------------------------------------------------

WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# The probes and the metrics are never limited: a balancer or Prometheus must always get in.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})


def unlimited(scope: Scope) -> bool:
    return scope["path"] in UNLIMITED_PATHS


def parse_rate_limit(text: str) -> tuple[int, str]:
    """ "120/minute" -> (120, "minute"); the pattern of `Settings.rate_limit` checked it."""
    count, _, unit = text.partition("/")
    return int(count), unit


class RateLimitMiddleware(ASGIMiddleware):
    """TINYGPT_RATE_LIMIT: requests per client (`client_key`) per fixed window, counted in the
    app's LimitStore (Redis when shared, atomically); over it, a 429 with `Retry-After`.
    Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, store: LimitStore, rate_limit: str):
        self.should_bypass_for_scope = unlimited
        self.store = store
        self.limit, self.unit = parse_rate_limit(rate_limit)
        self.window_s = WINDOW_SECONDS[self.unit]

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        hit = await self.store.hit(client_key(ASGIConnection(scope)), self.limit, self.window_s)
        reset = max(1, math.ceil(hit.reset_after))
        if not hit.allowed:
            raise TooManyRequestsException(
                detail=f"rate limit of {self.limit} requests per {self.unit} exceeded for this "
                f"client (TINYGPT_RATE_LIMIT); retry after {reset} s",
                headers={"retry-after": str(reset), **self.headers(0, reset)},
            )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in self.headers(hit.remaining, reset).items():
                    headers[name] = value
            await send(message)

        await next_app(scope, receive, send_with_headers)

    def headers(self, remaining: int, reset: int) -> dict[str, str]:
        return {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(remaining),
            "ratelimit-reset": str(reset),
        }


def rate_limit_middleware(settings: Settings, store: LimitStore) -> RateLimitMiddleware | None:
    return RateLimitMiddleware(store, settings.rate_limit) if settings.rate_limit else None


def cors_config(settings: Settings) -> CORSConfig | None:
    origins = split_keys(settings.cors_origins)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type"],
        expose_headers=["retry-after", "x-replica-id"],
    )
