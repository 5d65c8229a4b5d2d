"""Prometheus counters of the service's own work, beside the HTTP metrics of the middleware."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from litestar import Response, get
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import REGISTRY, Counter

from service.engine.metrics import EngineCollector, EngineMetrics

GENERATED_TOKENS = Counter(
    "tinygpt_generated_tokens_total", "Tokens returned by /v1/generate", ["model"]
)
PROMPT_TOKENS = Counter(
    "tinygpt_prompt_tokens_total", "Prompt tokens read by /v1/generate", ["model"]
)


class EngineSources:
    """The engine metrics of every loaded registry in this process, read at scrape time.

    One collector serves the whole process (Prometheus refuses two collectors of the same
    metric names), so registries sign in when they load and out when they unload."""

    def __init__(self) -> None:
        self.sources: dict[int, Callable[[], Mapping[str, EngineMetrics]]] = {}

    def add(self, key: int, source: Callable[[], Mapping[str, EngineMetrics]]) -> None:
        self.sources[key] = source

    def remove(self, key: int) -> None:
        self.sources.pop(key, None)

    def __call__(self) -> dict[str, EngineMetrics]:
        merged: dict[str, EngineMetrics] = {}
        for source in list(self.sources.values()):
            merged.update(source())
        return merged


ENGINE_SOURCES = EngineSources()
REGISTRY.register(EngineCollector(ENGINE_SOURCES))


class MetricsController(PrometheusController):
    """Litestar's Prometheus endpoint, documented as the text it answers with."""

    @get(
        media_type="text/plain",
        operation_id="metrics",
        summary="Prometheus metrics",
        description="HTTP, engine and token counters in Prometheus' text format.",
    )
    async def get(self) -> Response:
        return await PrometheusController.get.fn(self)
