"""The Litestar application; `create_app` is its factory.

`uvicorn --factory service.app:create_app` serves it as `tinygpt serve` does.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from litestar import Litestar, Router
from litestar.datastructures import MutableScopeHeaders, State
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import BeforeMessageSendHookHandler, Guard, Message, Scope

from service.controllers.admin import AdminController
from service.controllers.generation import GenerationController
from service.controllers.health import HealthController
from service.controllers.inspection import InspectionController
from service.controllers.models import ModelsController
from service.controllers.openai import OpenAIController
from service.controllers.playground import (
    PlaygroundController,
    playground_page,
    playground_static_files,
)
from service.controllers.timeline import TimelineController
from service.controllers.tokenization import TokenizationController
from service.decoding import StrictJSONRequest
from service.draining import Drain, drain_on_sigterm
from service.errors import EXCEPTION_HANDLERS
from service.inspection import Inspector
from service.limits import Admission
from service.metrics import SHARED_LIMITS, MetricsController
from service.openai.errors import on_openai_routes
from service.openapi import ClosedRequestSchemaPlugin
from service.registry import ModelRegistry
from service.security import (
    api_key_guards,
    api_keys,
    cors_config,
    rate_limit_middleware,
    trusted_networks,
)
from service.settings import MAX_BODY_BYTES, Settings, replica_name
from service.shared_limits import LimitStore, RedisLimits, limit_store

log = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return version("tinygpt-serve")
    except PackageNotFoundError:
        return "0.0.0"


@asynccontextmanager
async def loaded_models(app: Litestar) -> AsyncIterator[None]:
    """Load every checkpoint before serving; no loadable checkpoint means no start."""
    registry: ModelRegistry = app.state.registry
    await registry.load()
    # What start-up made (modules, models) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it and stops both threads
    # for 140-200 ms (seen every 15 s or so at 32 streams), but for a few milliseconds.
    gc.collect()
    gc.freeze()
    log.info("ready: serving %s", ", ".join(registry.model_ids))
    try:
        yield
    finally:
        await registry.unload()
        gc.unfreeze()  # an app that stops in a process that goes on leaves nothing uncollected


@asynccontextmanager
async def shared_limits(app: Litestar) -> AsyncIterator[None]:
    """The limits' store: connected before the models load, closed after they stop (their
    last sequences release their leases on the way out)."""
    store: LimitStore = app.state.limits
    await store.start()
    if isinstance(store, RedisLimits):
        SHARED_LIMITS.stores[id(app)] = store
    try:
        yield
    finally:
        SHARED_LIMITS.stores.pop(id(app), None)
        await store.close()


def replica_header(replica: str) -> BeforeMessageSendHookHandler:
    """`X-Replica-Id` on every response, errors and unknown paths included: which worker or
    replica behind a balancer answered."""

    async def add_header(message: Message, _: Scope) -> None:
        if message["type"] == "http.response.start":
            MutableScopeHeaders.from_message(message)["x-replica-id"] = replica

    return add_header


def provide_registry(state: State) -> ModelRegistry:
    return state.registry


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_admission(state: State) -> Admission:
    return state.admission


def provide_inspector(state: State) -> Inspector:
    return state.inspector


def provide_drain(state: State) -> Drain:
    return state.drain


DOCS_PATH = "/docs"


def v1_router(guards: list[Guard]) -> Router:
    """The `/v1` API, behind `guards` (the API-key guard when keys are configured)."""
    return Router(
        path="/v1",
        route_handlers=[
            ModelsController,
            GenerationController,
            OpenAIController,
            InspectionController,
            TokenizationController,
            PlaygroundController,
            TimelineController,
        ],
        guards=guards,
    )


def docs_router(guards: list[Guard]) -> Router:
    """The router Litestar fills with the OpenAPI document and Swagger UI; as its own default
    one (out of the schema, no DTOs), plus `guards` (when TINYGPT_PROTECT_DOCS is on)."""
    return Router(
        path=DOCS_PATH,
        route_handlers=[],
        include_in_schema=False,
        dto=None,
        return_dto=None,
        guards=guards,
    )


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the application; `settings` default to the `TINYGPT_*` environment."""
    settings = settings or Settings.from_env()
    prometheus = PrometheusConfig(
        app_name="tinygpt-serve",
        prefix="tinygpt_http",
        group_path=True,  # label by route template, not by every raw path
        exclude_unhandled_paths=True,
    )
    level = settings.log_level.upper()
    guards = api_key_guards(settings)  # none when no API key is configured
    trusted_networks(settings.trusted_proxies)  # a bad entry stops the start, naming it
    limits = limit_store(settings.redis_url, settings.redis_lease)
    replica = replica_name(settings)
    return Litestar(
        route_handlers=[
            HealthController,
            v1_router(guards),
            playground_page,
            playground_static_files,
            MetricsController,
            AdminController,
        ],
        state=State(
            {
                "settings": settings,
                "registry": ModelRegistry(settings),
                "admission": Admission(settings, limits),
                "inspector": Inspector(settings),
                "limits": limits,
                "api_keys": tuple(api_keys(settings)),  # who a client is (security.client_key)
                "replica": replica,
                "drain": Drain(settings.drain_delay),
            }
        ),
        dependencies={
            "registry": Provide(provide_registry, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "admission": Provide(provide_admission, sync_to_thread=False),
            "inspector": Provide(provide_inspector, sync_to_thread=False),
            "drain": Provide(provide_drain, sync_to_thread=False),
        },
        lifespan=[drain_on_sigterm, shared_limits, loaded_models],
        before_send=[replica_header(replica)],
        plugins=[ClosedRequestSchemaPlugin()],
        middleware=[
            prometheus.middleware,
            *filter(None, [rate_limit_middleware(settings, limits)]),
        ],
        cors_config=cors_config(settings),
        exception_handlers=on_openai_routes(EXCEPTION_HANDLERS),
        request_class=StrictJSONRequest,
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="tinygpt-serve",
            version=package_version(),
            description="Sampling, next-token distributions and token-vector neighbours "
            "of small character-level language models.",
            path=DOCS_PATH,
            openapi_router=docs_router(guards if settings.protect_docs else []),
            render_plugins=[SwaggerRenderPlugin()],
            use_handler_docstrings=True,
        ),
        # Unexpected errors are logged once, by service.errors; the root logger gets ours.
        logging_config=LoggingConfig(
            root={"level": level, "handlers": ["queue_listener"]},
            loggers={
                "litestar": {"level": level, "handlers": ["queue_listener"], "propagate": False}
            },
            log_exceptions="never",
        ),
    )
