"""No request can hurt another: hostile requests sent to a real server while 8 seeded streams
generate on it. Every hostile request gets a 4xx (or a 503 with Retry-After for genuine
overload), and every stream ends with 200 and exactly the text it gets alone."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.fuzz.known_bad import load_known_bad, request_content
from tests.integration.conftest import REPO, SHIPPED_GPT, Server, running_server
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

ADMIN_KEY = "blast-admin"
STREAM_TOKENS = 1500
HUGE = 1180591620717411303424  # 2**70: past any 64-bit integer


@pytest.fixture(scope="module")
def blast_server(
    checkpoint_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The tiny models, and the shipped gpt-char: slow enough that its streams are still
    generating while every hostile request is answered."""
    workdir = tmp_path_factory.mktemp("blast")
    checkpoints = shutil.copytree(checkpoint_folder, workdir / "checkpoints")
    shutil.copytree(REPO / "checkpoints" / SHIPPED_GPT, checkpoints / SHIPPED_GPT)
    with running_server(
        checkpoints,
        workdir,
        TINYGPT_DEVICE="cpu",
        TINYGPT_ADMIN_KEYS=ADMIN_KEY,
        TINYGPT_MAX_NEW_TOKENS=str(STREAM_TOKENS),
        TINYGPT_TORCH_THREADS="1",
    ) as server:
        yield server


def stream_request(i: int) -> dict:
    return {
        "model": SHIPPED_GPT,
        "prompt": ["ROMEO:", "KING", "First Citizen:\n", "O"][i % 4],
        "max_new_tokens": STREAM_TOKENS,
        "temperature": 0.7 + i / 10,
        "top_k": [None, 20, 40, 65][i % 4],
        "top_p": 0.95,
        "repetition_penalty": 1.0 + i / 20,
        "seed": 1000 + i,
    }


def nested(opening: str, closing: str, depth: int, inner: str = "") -> str:
    return opening * depth + inner + closing * depth


# (what, method, path, JSON body or raw text)
HOSTILE: list[tuple[str, str, str, object]] = [
    ("top_k past int64", "POST", "/v1/generate", {"model": SHIPPED_GPT, "top_k": HUGE}),
    ("top_k past int64", "POST", "/v1/completions", {"model": SHIPPED_GPT, "top_k": HUGE}),
    ("top_k past int64, bigram", "POST", "/v1/generate", {"model": BIGRAM_ID, "top_k": HUGE}),
    ("max tokens past int64", "POST", "/v1/generate", {"model": GPT_ID, "max_new_tokens": HUGE}),
    ("seed below zero", "POST", "/v1/generate", {"model": GPT_ID, "seed": -HUGE}),
    ("temperature 1e300", "POST", "/v1/generate", {"model": GPT_ID, "temperature": 1e300}),
    ("temperature 1e400", "POST", "/v1/generate", '{"model": "gpt-tiny", "temperature": 1e400}'),
    ("NaN", "POST", "/v1/generate", '{"model": "gpt-tiny", "temperature": NaN}'),
    ("penalty zero", "POST", "/v1/generate", {"model": GPT_ID, "repetition_penalty": 0}),
    ("five stop strings", "POST", "/v1/generate", {"model": GPT_ID, "stop": ["a"] * 5}),
    ("long stop string", "POST", "/v1/generate", {"model": GPT_ID, "stop": "ab" * 1000}),
    ("k past int64", "POST", "/v1/neighbours", {"model": GPT_ID, "token": "a", "k": HUGE}),
    ("next-token top_k", "POST", "/v1/next-token", {"model": GPT_ID, "top_k": HUGE}),
    ("id past int64", "POST", "/v1/detokenize", {"model": GPT_ID, "ids": [HUGE]}),
    ("20,000 nested [", "POST", "/v1/generate", nested("[", "]", 20_000)),
    ("5,000 nested objects", "POST", "/v1/completions", nested('{"a":', "}", 5_000, "1")),
    ("5,000 prompts", "POST", "/v1/completions", {"model": GPT_ID, "prompt": ["a"] * 5000}),
    ("10,000 prompts", "POST", "/v1/completions", {"model": GPT_ID, "prompt": ["a"] * 10_000}),
    ("64 x 16", "POST", "/v1/completions", {"model": GPT_ID, "prompt": ["a"] * 64, "n": 16}),
    ("bad character", "POST", "/v1/generate", {"model": SHIPPED_GPT, "prompt": "naïve ☃"}),
    ("table past its end", "GET", f"/v1/models/{BIGRAM_ID}/bigram-table?row_start=9999", None),
    ("table of a GPT", "GET", f"/v1/models/{SHIPPED_GPT}/bigram-table", None),
    ("unknown model", "POST", "/v1/generate", {"model": "gpt-huge"}),
    ("not JSON", "POST", "/v1/generate", "{"),
]  # fmt: skip


# Every request fuzzing ever found a 5xx with, and the edge values kept beside them: each
# must get an answer below 500 (some edges are valid requests, answered 200).
FUZZ_FOUND: list[tuple[str, str, str, object]] = [
    (entry["why"], entry["method"], entry["path"].format(**entry.get("path_parameters", {})),
     request_content(entry).decode())
    for entry in load_known_bad()
]  # fmt: skip


@dataclass
class StreamResult:
    status: int = 0
    text: str = ""
    ended_at: float = 0.0
    events: list[str] = field(default_factory=list)


def read_stream(url: str, body: dict, started: threading.Event) -> StreamResult:
    result = StreamResult()
    with httpx.stream(
        "POST", f"{url}/v1/generate", json={**body, "stream": True}, timeout=300
    ) as r:
        result.status = r.status_code
        for line in r.iter_lines():
            if line.startswith("event: "):
                result.events.append(line[7:])
                started.set()
            elif line.startswith("data: ") and result.events[-1] == "done":
                result.text = json.loads(line[6:])["text"]
    result.ended_at = time.monotonic()
    return result


def send(client: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    if isinstance(body, str):
        headers = {"content-type": "application/json"}
        return client.request(method, path, content=body.encode(), headers=headers)
    return client.request(method, path, json=body)


def assert_refused(what: str, response: httpx.Response) -> None:
    """A 4xx in one of the error shapes, or a 503 that says when to retry."""
    status = response.status_code
    overloaded = status == 503 and "retry-after" in response.headers
    assert 400 <= status < 500 or overloaded, f"{what}: {status} {response.text[:300]}"
    assert response.json()["error"]["message"], what


def test_hostile_requests_do_not_touch_other_streams(blast_server: Server):
    url = blast_server.url
    with httpx.Client(base_url=url, timeout=120) as client:
        alone = [
            client.post("/v1/generate", json=stream_request(i)).json()["text"] for i in range(8)
        ]
        starts = [threading.Event() for _ in range(8)]
        with ThreadPoolExecutor(max_workers=8) as streams, ThreadPoolExecutor(4) as hostile:
            futures = [
                streams.submit(read_stream, url, stream_request(i), starts[i]) for i in range(8)
            ]
            for started in starts:
                assert started.wait(60), "a stream did not start"
            answers = list(hostile.map(lambda case: send(client, *case[1:]), HOSTILE))
            fuzz_answers = list(hostile.map(lambda case: send(client, *case[1:]), FUZZ_FOUND))
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            reloads = list(
                hostile.map(lambda _: client.post("/admin/reload", headers=admin), range(3))
            )
            hostile_done = time.monotonic()
            results = [future.result() for future in futures]

    for (what, *_), response in zip(HOSTILE, answers, strict=True):
        assert_refused(what, response)
    for (what, *_), response in zip(FUZZ_FOUND, fuzz_answers, strict=True):
        assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    assert all(r.status_code == 200 and r.json()["unchanged"] for r in reloads)
    for i, result in enumerate(results):
        assert result.status == 200 and result.events[-1] == "done", (i, result.events[-3:])
        assert result.text == alone[i], f"stream {i} differs from its solo text"
    # The hostile requests really landed while all eight streams were generating.
    assert all(result.ended_at > hostile_done for result in results)
    assert "Traceback" not in blast_server.log()
