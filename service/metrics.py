"""Prometheus counters of the service's own work, beside the HTTP metrics of the middleware;
every series of /metrics is labelled with the replica that answered."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

from litestar import Request, Response, get
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.engine.metrics import EngineCollector, EngineMetrics
from service.shared_limits import RedisLimits

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


class SharedLimitsCollector(Collector):
    """Whether the limits' Redis answers, and how many decisions this process made alone
    because it did not (service/shared_limits.py); nothing while no Redis is configured.
    Stores sign in when their app starts, as the engines' registries do."""

    def __init__(self) -> None:
        self.stores: dict[int, RedisLimits] = {}

    def collect(self) -> Iterator[Metric]:
        if not self.stores:
            return
        stores = list(self.stores.values())
        yield GaugeMetricFamily(
            "tinygpt_redis_up",
            "1 while the Redis of the shared limits answers, 0 while it does not (fail open: "
            "limits are then counted per replica)",
            value=min(1 if store.up else 0 for store in stores),
        )
        yield CounterMetricFamily(
            "tinygpt_redis_fallbacks",
            "Rate-limit and client-cap decisions made by this process alone: Redis was down",
            value=sum(store.fallbacks for store in stores),
        )


SHARED_LIMITS = SharedLimitsCollector()
REGISTRY.register(SHARED_LIMITS)


class ReplicaLabelled(Collector):
    """Every series of `source`, with a `replica` label: one Prometheus job can scrape several
    replicas (or workers, which answer /metrics in turn) behind one address and tell them
    apart."""

    def __init__(self, source: Collector, replica: str):
        self.source = source
        self.replica = replica

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            labelled = copy.copy(family)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "replica": self.replica})
                for sample in family.samples
            ]
            yield labelled


class MetricsController(PrometheusController):
    """Litestar's Prometheus endpoint, documented as the text it answers with."""

    @get(
        media_type="text/plain",
        operation_id="metrics",
        summary="Prometheus metrics",
        description="HTTP, engine, token and shared-limit metrics in Prometheus' text format, "
        "each series labelled with the `replica` that answered.",
    )
    async def get(self, request: Request) -> Response:
        text = generate_latest(ReplicaLabelled(REGISTRY, request.app.state.replica))
        return Response(text, headers={"content-type": CONTENT_TYPE_LATEST})
