"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from service.controllers import error_responses
from service.draining import Drain
from service.exceptions import NotReadyError
from service.registry import ModelRegistry
from service.schemas import Health, Readiness


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health")
    async def health(self) -> Health:
        """Answer 200 for as long as the process serves requests."""
        return Health(status="ok")

    @get("/ready", operation_id="ready", responses=error_responses(503))
    async def ready(
        self, registry: NamedDependency[ModelRegistry], drain: NamedDependency[Drain]
    ) -> Readiness:
        """Answer 200 once the models are loaded and warm, 503 before and once draining."""
        if drain.draining:
            raise NotReadyError(
                "draining: this replica is shutting down (SIGTERM) and finishing its requests; "
                "send new ones to another replica"
            )
        if not registry.ready:
            raise NotReadyError("the models are still loading; retry in a moment")
        if pending := registry.pending:
            raise NotReadyError(
                f"compiling the decode step of {', '.join(pending)}; retry in a moment "
                "(requests to these models wait until it is done)"
            )
        return Readiness(status="ready", models=registry.model_ids)
