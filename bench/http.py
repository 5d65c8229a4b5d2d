"""Serving benchmark over HTTP: concurrent streaming clients against a real server.

    python -m bench.http [--model reference|gpt-char] [--concurrency 1 8 32 64] [--compile-decode]
    python -m bench.http --url http://127.0.0.1:8000 --model gpt-char   # a server you run

Without --url it starts `tinygpt serve` itself on a free loopback port, serving either the
shipped gpt-char or `reference`: the reference GPT setting (4 layers, 4 heads, 128 dims,
block 64) with seeded random weights, which generate as fast as trained ones; with
--compile-decode, that server runs with TINYGPT_COMPILE_DECODE=true.

Each client sends `/v1/generate` requests with `stream: true` back to back; per request it
records the time to first token (TTFT), the gaps between tokens (inter-token latency, ITL) and
the end-to-end latency, the numbers serving benchmarks report. Results go to a JSON file and a
markdown table on stdout.
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
from collections.abc import Iterator
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
    if not stamps:
        raise RuntimeError("the stream ended without a token")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return RequestTiming(stamps[0] - started, gaps, stamps[-1] - started, len(stamps))


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
def running_server(model_name: str, torch_threads: int, compile_decode: bool) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(model_name, Path(tmp))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = os.environ | {
            "TINYGPT_CHECKPOINTS": tmp,
            "TINYGPT_DEVICE": "cpu",
            "TINYGPT_TORCH_THREADS": str(torch_threads),
            "TINYGPT_COMPILE_DECODE": str(compile_decode).lower(),
            "TINYGPT_LOG_LEVEL": "warning",
        }
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        server = subprocess.Popen(command, env=env, cwd=REPO)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300  # a compiled decode step takes a while
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


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
    parser.add_argument("--torch-threads", type=int, default=1, help="for the started server")
    parser.add_argument(
        "--compile-decode", action="store_true", help="the started server compiles its decode step"
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
        with running_server(args.model, args.torch_threads, args.compile_decode) as args.url:
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
