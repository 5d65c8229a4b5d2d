"""Engine metrics as plain Python numbers, and a Prometheus collector that reads them.

The decode thread updates the numbers without locks (single writer; reading an int or a list
slot is atomic under the GIL). A scrape may see a histogram whose count and buckets are one
observation apart, which Prometheus tolerates.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Upper bounds in seconds. A token takes well under a millisecond to a few milliseconds per
# decode step here; the first token also waits in the queue and for its prefill.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The metric family a collector builds: each `family(...)` call returns the class it was given.
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
ITL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class Histogram:
    """Counts of observations per bucket (upper bounds, `le` as in Prometheus) plus +Inf."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) pairs ending with +Inf, the Prometheus exposition."""
        pairs, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


@dataclass
class EngineMetrics:
    running: int = 0  # sequences in the decode batch
    waiting: int = 0  # requests queued for a free slot
    tokens_generated: int = 0
    requests_finished: dict[str, int] = field(default_factory=dict)  # by finish_reason
    requests_rejected: int = 0  # QueueFullError
    requests_failed: int = 0  # ended by an EngineError
    decode_steps: int = 0
    time_to_first_token: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    inter_token_latency: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))

    def count_finished(self, reason: str) -> None:
        self.requests_finished[reason] = self.requests_finished.get(reason, 0) + 1


class EngineCollector(Collector):
    """Exports the metrics of every engine, labelled by model, at scrape time:

    REGISTRY.register(EngineCollector(lambda: {name: e.metrics for name, e in engines}))
    """

    def __init__(self, engines: Callable[[], Mapping[str, EngineMetrics]]):
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        def family(kind: type[F], name: str, doc: str) -> F:
            return kind(f"tinygpt_engine_{name}", doc, labels=["model"])

        running = family(GaugeMetricFamily, "running_sequences", "Sequences being decoded")
        waiting = family(GaugeMetricFamily, "queue_depth", "Requests waiting for a slot")
        tokens = family(CounterMetricFamily, "generated_tokens", "Tokens generated")
        steps = family(CounterMetricFamily, "decode_steps", "Decode steps run")
        rejected = family(CounterMetricFamily, "rejected_requests", "Requests refused: queue full")
        failed = family(CounterMetricFamily, "failed_requests", "Requests ended by an error")
        finished = CounterMetricFamily(
            "tinygpt_engine_finished_requests",
            "Requests finished, by finish reason",
            labels=["model", "finish_reason"],
        )
        ttft = family(HistogramMetricFamily, "time_to_first_token_seconds", "Submit to 1st token")
        itl = family(HistogramMetricFamily, "inter_token_latency_seconds", "Gap between tokens")
        for model, m in self.engines().items():
            running.add_metric([model], m.running)
            waiting.add_metric([model], m.waiting)
            tokens.add_metric([model], m.tokens_generated)
            steps.add_metric([model], m.decode_steps)
            rejected.add_metric([model], m.requests_rejected)
            failed.add_metric([model], m.requests_failed)
            for reason, n in sorted(m.requests_finished.items()):
                finished.add_metric([model, reason], n)
            for metric, histogram in ((ttft, m.time_to_first_token), (itl, m.inter_token_latency)):
                metric.add_metric([model], histogram.cumulative(), histogram.total)
        yield from (running, waiting, tokens, steps, rejected, failed, finished, ttft, itl)
