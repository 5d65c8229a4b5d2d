"""Serving benchmark over HTTP: concurrent streaming clients against a real server.

    python -m bench.http [--model reference|gpt-char] [--concurrency 1 8 32 64] [--decode eager]
                         [--in-process] [--repeats 3]
    python -m bench.http --workers 2 --concurrency 32    # `tinygpt serve --workers 2`
    python -m bench.http --url http://127.0.0.1:8000 --model gpt-char   # a server you run

Without --url it starts `tinygpt serve` itself on a free loopback port, serving either the
shipped gpt-char or `reference`: the reference GPT setting (4 layers, 4 heads, 128 dims,
block 64) with seeded random weights, which generate as fast as trained ones. The server runs
with its defaults (its own choice of torch threads and decode path) unless told:
--decode eager|compiled sets TINYGPT_COMPILE_DECODE, --torch-threads TINYGPT_TORCH_THREADS;
with --workers N, it is N processes on the one port (TINYGPT_WORKERS).

Each client sends `/v1/generate` requests with `stream: true` back to back (with
--length-spread, of lengths drawn as `request_lengths` says); per request it
records the time to first token (TTFT), the gaps between tokens (inter-token latency, ITL) and
the end-to-end latency, the numbers serving benchmarks report, and which replica answered
(`X-Replica-Id`: with several workers, how the requests spread). The clients are lean
keep-alive HTTP/1.1 connections (see ResponseReader): they share the server's cores.
One untimed level at the highest concurrency warms the server up; then each level runs
--repeats times and the median run counts. With --in-process each run is followed at once by
the same requests to the same engine in this process (whole results, no HTTP), and the median
of the runs' ratios is what the HTTP layer costs.
Results go to a JSON file and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httpx
import torch
import uvloop

from models.checkpoint import load_checkpoint, save_checkpoint
from models.gpt import GPT, GPTConfig
from models.sampling import SamplingParams
from service.engine import GenerationRequest
from service.loaded_model import LoadedModel
from service.registry import ModelRegistry
from service.settings import Settings

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


class ResponseReader(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer as it arrives.

    The clients share the server's cores on one machine, so they must cost as little as
    possible; they run on uvloop, as the server does (asyncio's own loop took 17-20 µs of the
    client's CPU per token at 32 clients, uvloop 11-18). httpx's streaming reader took about
    0.6 of a core from the server at 32 clients here, and asyncio's StreamReader (a readline,
    a readexactly and a wait_for per chunk) about 0.35 of a core at 7,000 tokens/s. This
    protocol parses in `data_received` just the HTTP the server answers with (a status line,
    headers, then a chunked or Content-Length body), and of the body it looks at nothing but
    how many token events each chunk holds.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.response: asyncio.Future[tuple[dict[str, str], bytes]] | None = None
        self.headers: dict[str, str] | None = None
        self.body: list[bytes] = []  # kept only when the answer is not a 200
        self.chunk_left = -1  # bytes of the current chunk (and its CRLF) still to come
        self.stamps: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.response is not None and not self.response.done():
            self.response.set_exception(exc or ConnectionResetError("the server closed"))

    def send(self, request: bytes, stamps: list[float]) -> asyncio.Future:
        """Write `request`; the future gets (headers, body) once the whole answer is in, and
        `stamps` the arrival time of every token event meanwhile."""
        assert self.transport is not None
        self.response = asyncio.get_running_loop().create_future()
        self.headers, self.body, self.chunk_left, self.stamps = None, [], -1, stamps
        self.transport.write(request)
        return self.response

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.headers is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line, *lines = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            self.headers = {":status": status_line.split(" ")[1]}
            for line in lines:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            self.read_chunks()
        elif len(self.buffer) >= int(self.headers.get("content-length", "0")):
            self.body.append(bytes(self.buffer))
            self.buffer.clear()
            self.finish()

    def read_chunks(self) -> None:
        while True:
            if self.chunk_left < 0:  # at a chunk's size line
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.buffer[:end], 16)
                if size == 0:  # the last chunk: done once the blank line after it is in
                    if len(self.buffer) >= end + 4:
                        del self.buffer[: end + 4]
                        self.finish()
                    return
                del self.buffer[: end + 2]
                self.chunk_left = size + 2
            if len(self.buffer) < self.chunk_left:
                return
            chunk = bytes(self.buffer[: self.chunk_left - 2])
            del self.buffer[: self.chunk_left]
            self.chunk_left = -1
            self.stamps.extend([time.perf_counter()] * chunk.count(b"event: token\n"))
            if self.headers[":status"] != "200":  # an error's body goes into its message
                self.body.append(chunk)

    def finish(self) -> None:
        assert self.response is not None and self.headers is not None
        if not self.response.done():
            self.response.set_result((self.headers, b"".join(self.body)))
        if self.headers.get("connection") == "close" and self.transport is not None:
            self.transport.close()


class StreamingConnection:
    """A client's connection to the server, opened on first use and again after a failure."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.reader: ResponseReader | None = None

    def close(self) -> None:
        if self.reader is not None and self.reader.transport is not None:
            self.reader.transport.close()
        self.reader = None

    async def post(self, path: str, body: dict, stamps: list[float]) -> tuple[dict, bytes]:
        """POST `body` as JSON; the answer's headers (lower-cased names, `:status` too) and
        body, with the arrival time of each token event added to `stamps`."""
        if self.reader is None or self.reader.transport is None:
            _, self.reader = await asyncio.get_running_loop().create_connection(
                ResponseReader, self.host, self.port
            )
        payload = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        async with asyncio.timeout(self.timeout):
            return await self.reader.send(request, stamps)


async def stream_one(connection: StreamingConnection, body: dict) -> RequestTiming:
    """One streamed generation: timestamps of every token event (events that arrive in one
    chunk share its time)."""
    started = time.perf_counter()
    stamps: list[float] = []
    headers, answer = await connection.post("/v1/generate", body, stamps)
    if headers[":status"] != "200":
        raise RuntimeError(f"HTTP {headers[':status']}: {answer[:200]!r}")
    if not stamps:
        raise RuntimeError("the stream ended without a token")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    replica = headers.get("x-replica-id", "")
    return RequestTiming(stamps[0] - started, gaps, stamps[-1] - started, len(stamps), replica)


def request_lengths(args: argparse.Namespace, client: int) -> list[int]:
    """The max_new_tokens of each of one client's requests, the same over HTTP and in process:
    --max-new-tokens each, or with --length-spread S drawn evenly from (1 - S) of it up to
    it, seeded by the client's number. Requests all of one length, started together, stay in
    step in process, where the batch's rows all read the same short span of the cache, while
    over HTTP each request's turnaround moves them apart and the longest row sets the span."""
    longest = args.max_new_tokens
    shortest = max(1, round(longest * (1 - args.length_spread)))
    draw = random.Random(client)
    return [draw.randint(shortest, longest) for _ in range(args.requests_per_client)]


async def client_loop(
    connection: StreamingConnection, body: dict, lengths: list[int], result: LevelResult
) -> None:
    try:
        for i, length in enumerate(lengths):
            try:
                timing = await stream_one(connection, {**body, "seed": i, "max_new_tokens": length})
                result.timings.append(timing)
            except (OSError, TimeoutError, RuntimeError) as err:
                connection.close()  # what was left of that answer is not read: start afresh
                result.errors.append(f"{type(err).__name__}: {err}")
    finally:
        connection.close()


async def run_level(args: argparse.Namespace, concurrency: int) -> dict:
    body = {
        "model": args.model,
        "prompt": args.prompt,
        "temperature": 1.0,
        "stream": True,
    }
    result = LevelResult()
    connections = [StreamingConnection(args.url, args.timeout) for _ in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            client_loop(c, body, request_lengths(args, client), result)
            for client, c in enumerate(connections)
        )
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


async def in_process_level(model: LoadedModel, args: argparse.Namespace, concurrency: int) -> dict:
    """The same requests as `run_level`'s clients send, to the same engine the server runs,
    in this process: each of `concurrency` tasks submits its requests one after another and
    takes each whole result at the end (no tokens handed over one by one)."""
    sampling = SamplingParams(temperature=1.0)
    prompt_ids = model.prompt_ids(args.prompt)  # as /v1/generate reads the prompt

    async def client(lengths: list[int], tokens: list[int]) -> None:
        for i, length in enumerate(lengths):
            request = GenerationRequest(prompt_ids, length, sampling, seed=i, stream_tokens=False)
            completion = await model.engine.submit(request).collect()
            tokens.append(completion.usage.completion_tokens)

    tokens: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(request_lengths(args, c), tokens) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "output_tokens_per_s": round(sum(tokens) / elapsed, 1),
        "seconds": round(elapsed, 2),
    }


@contextmanager
def engine_in_process(args: argparse.Namespace) -> Iterator[LoadedModel]:
    """The engine the started server runs, in this process: the server's own ModelRegistry,
    with the settings that server gets (its torch threads, its decode path, its caches)."""
    compile_decode = {"default": None, "eager": False, "compiled": True}[args.decode]
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(args.model, Path(tmp))
        settings = Settings(
            checkpoints=tmp,
            device="cpu",
            compile_decode=compile_decode,
            torch_threads=args.torch_threads,
        )
        registry = ModelRegistry(settings)
        asyncio.run(registry.load())
        model = registry.get(args.model)
        model.engine.warmed.wait()
        try:
            yield model
        finally:
            asyncio.run(registry.unload())


def median_run(runs: list[dict]) -> dict:
    """The run with the median output tokens/s (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda run: run["output_tokens_per_s"])
    return ordered[(len(ordered) - 1) // 2] | {
        "runs_tokens_per_s": [r["output_tokens_per_s"] for r in runs]
    }


def measured_levels(args: argparse.Namespace, alone: LoadedModel | None) -> list[dict]:
    """Every level --repeats times, the median run of each, after one untimed level at the
    highest concurrency (the server's first requests set up what later ones reuse). With an
    engine `alone` in this process, each run over HTTP is followed at once by the same
    requests to it: this machine's speed drifts by a third within minutes, so a ratio is
    taken from two runs side by side, and the median of those ratios counts."""
    uvloop.run(run_level(args, max(args.concurrency)))
    if alone is not None:
        uvloop.run(in_process_level(alone, args, max(args.concurrency)))
    rows = []
    for concurrency in args.concurrency:
        runs, ratios = [], []
        for _ in range(args.repeats):
            runs.append(uvloop.run(run_level(args, concurrency)))
            if alone is not None:
                here = uvloop.run(in_process_level(alone, args, concurrency))
                runs[-1]["in_process_tokens_per_s"] = here["output_tokens_per_s"]
                ratios.append(runs[-1]["output_tokens_per_s"] / here["output_tokens_per_s"])
        row = median_run(runs)
        if ratios:
            row["runs_in_process_tokens_per_s"] = [r["in_process_tokens_per_s"] for r in runs]
            row["runs_http_over_in_process"] = [round(r, 2) for r in ratios]
            row["http_over_in_process"] = round(statistics.median(ratios), 2)
        rows.append(row)
    return rows


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
    compared = "in_process_tokens_per_s" in rows[0]
    lines = [
        "| clients | tok/s | req/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms "
        "| E2E p50/p90/p99 ms | errors |"
        + (" in process tok/s | HTTP / in process |" if compared else ""),
        "| --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if compared else ""),
    ]
    for r in rows:

        def trio(key: str, r: dict = r) -> str:
            return "/".join(str(r[key][f"p{q}"]) for q in (50, 90, 99))

        lines.append(
            f"| {r['concurrency']} | {r['output_tokens_per_s']} | {r['requests_per_s']} "
            f"| {trio('ttft_ms')} | {trio('itl_ms')} | {trio('e2e_ms')} | {r['errors']} |"
            + (
                f" {r['in_process_tokens_per_s']} | {r['http_over_in_process']} |"
                if compared
                else ""
            )
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
    parser.add_argument(
        "--length-spread",
        type=float,
        default=0.0,
        help="requests of max_new_tokens drawn from (1 - S) x --max-new-tokens up to it",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each level; the median counts"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/http.json"))
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="then the same requests to the same engine in this process, for the ratio",
    )
    args = parser.parse_args()
    if not 0 <= args.length_spread < 1:
        parser.error(f"--length-spread must be at least 0 and below 1, not {args.length_spread}")
    if args.in_process and (args.url or args.workers != 1):
        parser.error("--in-process compares with the one-process server this starts")
    started = os.getloadavg()
    with ExitStack() as stack:
        if not args.url:
            server = running_server(args.model, args.torch_threads, args.decode, args.workers)
            args.url = stack.enter_context(server)
        alone = stack.enter_context(engine_in_process(args)) if args.in_process else None
        rows = measured_levels(args, alone)
    results = {
        "machine": machine()
        | {"load_average_at_start": started, "load_average_at_end": os.getloadavg()},
        "settings": vars(args) | {"out": str(args.out)},
        "levels": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
