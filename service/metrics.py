"""Prometheus counters of the service's own work, beside the HTTP metrics of the middleware."""

from __future__ import annotations

from prometheus_client import Counter

GENERATED_TOKENS = Counter(
    "tinygpt_generated_tokens_total", "Tokens returned by /v1/generate", ["model"]
)
PROMPT_TOKENS = Counter(
    "tinygpt_prompt_tokens_total", "Prompt tokens read by /v1/generate", ["model"]
)
