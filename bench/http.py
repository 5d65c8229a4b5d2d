"""Serving benchmark over HTTP: concurrent streaming clients against a real server.

    python -m bench.http [--model reference|gpt-char] [--concurrency 1 8 32 64] [--decode eager]
    python -m bench.http --workers 2 --concurrency 32    # `tinygpt serve --workers 2`
    python -m bench.http --url http://127.0.0.1:8000 --model gpt-char   # a server you run

Without --url it starts `tinygpt serve` itself on a free loopback port, serving either the
shipped gpt-char or `reference`: the reference GPT setting (4 layers, 4 heads, 128 dims,
block 64) with seeded random weights, which generate as fast as trained ones. The server runs
with its defaults (its own choice of torch threads and decode path) unless told:
--decode eager|compiled sets TINYGPT_COMPILE_DECODE, --torch-threads TINYGPT_TORCH_THREADS;
with --workers N, it is N processes on the one port (TINYGPT_WORKERS).

Each client sends `/v1/generate` requests with `stream: true` back to back; per request it
records the time to first token (TTFT), the gaps between tokens (inter-token latency, ITL) and
the end-to-end latency, the numbers serving benchmarks report, and which replica answered
(`X-Replica-Id`: with several workers, how the requests spread). Results go to a JSON file and
a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED_GPT = REPO / "checkpoints" / "gpt-char"
REFERENCE = dict(block_size=64, n_layer=4, n_head=4, n_embd=128)


@dataclass
class RequestTiming:
    ttft: float
    itls: list[float]
    e2e: float
    tokens: int
    replica: str


@dataclass
class LevelResult:
    timings: list[RequestTiming] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def stream_one(client: httpx.AsyncClient, body: dict) -> RequestTiming:
    """One streamed generation: timestamps of every token event."""
    started = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", "/v1/generate", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "token":
                stamps.append(time.perf_counter())
        replica = response.headers.get("x-replica-id", "")
    if not stamps:
        raise RuntimeError("the stream ended without a token")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return RequestTiming(stamps[0] - started, gaps, stamps[-1] - started, len(stamps), replica)


async def client_loop(
    client: httpx.AsyncClient, body: dict, requests: int, result: LevelResult
) -> None:
    for i in range(requests):
        try:
            timing = await stream_one(client, {**body, "seed": i})
            result.timings.append(timing)
        except (httpx.HTTPError, RuntimeError) as err:
            result.errors.append(str(err))


async def run_level(args: argparse.Namespace, concurrency: int) -> dict:
    body = {
        "model": args.model,
        "prompt": args.prompt,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 1.0,
        "stream": True,
    }
    result = LevelResult()
    limits = httpx.Limits(max_connections=concurrency + 4)
    timeout = httpx.Timeout(args.timeout)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(
                client_loop(client, body, args.requests_per_client, result)
                for _ in range(concurrency)
            )  # noqa: E501
        )
        elapsed = time.perf_counter() - started
    ttft = [t.ttft for t in result.timings]
    itl = [gap for t in result.timings for gap in t.itls]
    e2e = [t.e2e for t in result.timings]
    tokens = sum(t.tokens for t in result.timings)

    def ms(values: list[float]) -> dict:
        return {f"p{q}": round(percentile(values, q) * 1000, 2) for q in (50, 90, 99)}

    return {
        "concurrency": concurrency,
        "requests": len(result.timings),
        "errors": len(result.errors),
        "error_samples": result.errors[:3],
        "output_tokens_per_s": round(tokens / elapsed, 1),
        "requests_per_s": round(len(result.timings) / elapsed, 2),
        "ttft_ms": ms(ttft),
        "itl_ms": ms(itl),
        "e2e_ms": ms(e2e),
        "mean_itl_ms": round(statistics.fmean(itl) * 1000, 3) if itl else None,
        "seconds": round(elapsed, 2),
        "requests_by_replica": dict(Counter(t.replica for t in result.timings)),
    }


def write_checkpoint(model_name: str, root: Path) -> None:
    """The served folder: the shipped gpt-char, or the reference setting with random weights
    and gpt-char's vocabulary."""
    if model_name == "gpt-char":
        shutil.copytree(SHIPPED_GPT, root / "gpt-char")
        return
    tokenizer = load_checkpoint(SHIPPED_GPT).tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **REFERENCE))
    save_checkpoint(root / model_name, model, tokenizer, {})


@contextmanager
def running_server(
    model_name: str, torch_threads: int | None, decode: str, workers: int
) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(model_name, Path(tmp))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYGPT_")} | {
            "TINYGPT_CHECKPOINTS": tmp,
            "TINYGPT_DEVICE": "cpu",
            "TINYGPT_WORKERS": str(workers),
            "TINYGPT_LOG_LEVEL": "warning",
        }
        if torch_threads is not None:
            env["TINYGPT_TORCH_THREADS"] = str(torch_threads)
        if decode != "default":
            env["TINYGPT_COMPILE_DECODE"] = str(decode == "compiled").lower()
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        server = subprocess.Popen(command, env=env, cwd=REPO)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, workers)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def ready_replica(url: str) -> str | None:
    """The replica that answered /ready with 200 on a new connection, if any did."""
    try:
        response = httpx.get(f"{url}/ready", timeout=2)
    except httpx.TransportError:
        return None
    return response.headers.get("x-replica-id") if response.status_code == 200 else None


def wait_until_ready(url: str, workers: int) -> None:
    """Until `workers` replicas have said they are ready; a few requests at once, so that
    the kernel hands connections to every worker that listens."""
    ready: set[str | None] = set()
    deadline = time.monotonic() + 300  # a compiled decode step takes a while
    with ThreadPoolExecutor(4) as pool:
        while len(ready - {None}) < workers and time.monotonic() < deadline:
            ready |= set(pool.map(ready_replica, [url] * 4))
            time.sleep(0.2)


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| clients | tok/s | req/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms "
        "| E2E p50/p90/p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:

        def trio(key: str, r: dict = r) -> str:
            return "/".join(str(r[key][f"p{q}"]) for q in (50, 90, 99))

        lines.append(
            f"| {r['concurrency']} | {r['output_tokens_per_s']} | {r['requests_per_s']} "
            f"| {trio('ttft_ms')} | {trio('itl_ms')} | {trio('e2e_ms')} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running server; by default one is started")
    parser.add_argument("--model", default="reference", help="reference, gpt-char, or any")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="for the started server, in each worker (default: its own)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes of the started server")
    parser.add_argument(
        "--decode",
        choices=["default", "eager", "compiled"],
        default="default",
        help="the started server's decode step (default: the server's own choice)",
    )
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/http.json"))
    args = parser.parse_args()
    started = os.getloadavg()
    if args.url:
        rows = [asyncio.run(run_level(args, c)) for c in args.concurrency]
    else:
        server = running_server(args.model, args.torch_threads, args.decode, args.workers)
        with server as args.url:
            rows = [asyncio.run(run_level(args, c)) for c in args.concurrency]
    results = {
        "machine": machine() | {"load_average_at_start": started},
        "settings": vars(args) | {"out": str(args.out)},
        "levels": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
