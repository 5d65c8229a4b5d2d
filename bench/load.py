"""Bounded load test over HTTP: concurrent clients mixing generate, next-token and neighbours.

    python -m bench.load                                  # 64 clients for 60 s (make load)
    python -m bench.load --clients 32 --duration 15       # a shorter run
    python -m bench.load --url http://127.0.0.1:8000 --pid 1234   # a server you run

Without --url it starts `python -m service.cli serve` itself on a free loopback port with the
shipped checkpoints. Each client sends requests back to back, cycling through a short
`/v1/generate` (32 tokens), `/v1/next-token` and `/v1/neighbours`. After a warm-up the run
reads the server process' resident memory (minute 0), runs for the given duration and reads
it again. It reports requests, errors, p50/p90/p99 latency per endpoint and the memory
growth, writes JSON (bench/results/load.json) and prints a markdown table; the exit status
is 1 when any request failed or memory grew by 10% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "load.json"
MAX_RSS_GROWTH = 0.10
STARTUP_SECONDS = 120
PROMPTS = ["ROMEO:", "First Citizen:\nWe are", "The king", "", "O, she doth teach", "What"]
ENDPOINTS = ("generate", "next-token", "neighbours")


def resident_bytes(pid: int) -> int:
    """The resident set size of process `pid`: psutil where installed, else /proc."""
    try:
        import psutil
    except ImportError:
        status = Path(f"/proc/{pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024
    return int(psutil.Process(pid).memory_info().rss)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def started_server(
    checkpoints: Path, log_path: Path | None = None, **env: str
) -> Iterator[tuple[str, int]]:
    """`tinygpt serve` on a free loopback port, ready; yields (url, pid)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYGPT_")}
    environ |= {"TINYGPT_CHECKPOINTS": str(checkpoints), "TINYGPT_LOG_LEVEL": "warning"} | env
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--device", "cpu"]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, env=environ, cwd=REPO, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} at start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {STARTUP_SECONDS} s")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_path:
            log.close()  # type: ignore[union-attr]


def request_for(endpoint: str, n: int, models: list[str], max_new_tokens: int) -> dict[str, Any]:
    model = models[n % len(models)]
    prompt = PROMPTS[n % len(PROMPTS)]
    if endpoint == "generate":
        return {"model": model, "prompt": prompt, "max_new_tokens": max_new_tokens, "seed": n}
    if endpoint == "next-token":
        return {"model": model, "context": prompt, "top_k": 10}
    return {"model": models[0], "token": "e", "k": 10}


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
        self.errors: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.examples: list[str] = []  # the first few errors, for the report

    def error(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{endpoint}: {what}")


async def client(
    http: httpx.AsyncClient, index: int, until: float, recorder: Recorder | None,
    models: list[str], max_new_tokens: int,
) -> None:  # fmt: skip
    n = index
    while time.monotonic() < until:
        endpoint = ENDPOINTS[n % len(ENDPOINTS)]
        body = request_for(endpoint, n, models, max_new_tokens)
        n += 1
        start = time.perf_counter()
        try:
            response = await http.post(f"/v1/{endpoint}", json=body)
        except httpx.HTTPError as err:
            if recorder:
                recorder.error(endpoint, f"{type(err).__name__}: {err}")
            continue
        elapsed = time.perf_counter() - start
        if recorder is None:
            continue
        if response.status_code != 200:
            recorder.error(endpoint, f"{response.status_code} {response.text[:200]}")
        else:
            recorder.latencies[endpoint].append(elapsed)


async def run_phase(
    url: str, clients: int, seconds: float, recorder: Recorder | None, models: list[str],
    max_new_tokens: int,
) -> None:  # fmt: skip
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them: with
    # both at 5 s, a request sent on a connection the server is closing fails with a ReadError.
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(client(http, i, until, recorder, models, max_new_tokens) for i in range(clients))
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_load(
    url: str, pid: int | None, *, clients: int = 64, duration: float = 60.0,
    warmup: float = 5.0, models: list[str] | None = None, max_new_tokens: int = 32,
    rss: Callable[[int], int] = resident_bytes,
) -> dict[str, Any]:  # fmt: skip
    """Warm up, read the server's memory, run for `duration` s, read it again; the report."""
    models = models or ["gpt-char", "bigram-char"]
    asyncio.run(run_phase(url, clients, warmup, None, models, max_new_tokens))
    rss_start = rss(pid) if pid else None
    recorder = Recorder()
    started = time.monotonic()
    asyncio.run(run_phase(url, clients, duration, recorder, models, max_new_tokens))
    elapsed = time.monotonic() - started
    rss_end = rss(pid) if pid else None
    endpoints = {}
    for endpoint in ENDPOINTS:
        latencies = recorder.latencies[endpoint]
        endpoints[endpoint] = {
            "requests": len(latencies) + recorder.errors[endpoint],
            "errors": recorder.errors[endpoint],
            "rps": round(len(latencies) / elapsed, 1),
            **{f"p{q}_ms": round(percentile(latencies, q) * 1000, 1) for q in (50, 90, 99)},
        }
    growth = (rss_end - rss_start) / rss_start if rss_start and rss_end else None
    return {
        "url": url,
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "warmup_s": warmup,
        "models": models,
        "max_new_tokens": max_new_tokens,
        "requests": sum(e["requests"] for e in endpoints.values()),
        "errors": sum(e["errors"] for e in endpoints.values()),
        "error_examples": recorder.examples,
        "endpoints": endpoints,
        "rss_start_mib": round(rss_start / 2**20, 1) if rss_start else None,
        "rss_end_mib": round(rss_end / 2**20, 1) if rss_end else None,
        "rss_growth": round(growth, 4) if growth is not None else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['clients']} clients for {report['duration_s']} s against {report['url']}",
        "",
        "| endpoint | requests | errors | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in report["endpoints"].items():
        lines.append(
            f"| /v1/{name} | {e['requests']} | {e['errors']} | {e['rps']} | {e['p50_ms']} "
            f"| {e['p90_ms']} | {e['p99_ms']} |"
        )
    if report["rss_growth"] is not None:
        lines += [
            "",
            f"server RSS: {report['rss_start_mib']} MiB after warm-up, "
            f"{report['rss_end_mib']} MiB at the end ({report['rss_growth']:+.1%})",
        ]
    if report["error_examples"]:
        lines += ["", "errors, first few:", *report["error_examples"]]
    return "\n".join(lines)


def passed(report: dict[str, Any]) -> bool:
    growth = report["rss_growth"]
    return report["errors"] == 0 and (growth is None or growth < MAX_RSS_GROWTH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start one on loopback")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for its memory")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--models", nargs="+", default=["gpt-char", "bigram-char"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before minute 0")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    options = dict(
        clients=args.clients, duration=args.duration, warmup=args.warmup, models=args.models,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    if args.url:
        report = run_load(args.url.rstrip("/"), args.pid, **options)
    else:
        with started_server(args.checkpoints) as (url, pid):
            report = run_load(url, pid, **options)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwrote {args.out}")
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
