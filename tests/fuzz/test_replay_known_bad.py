"""Requests that once made the server answer 5xx (or that sit on an edge where one would),
replayed on a real server every run: each must get a 4xx or 2xx answer that the OpenAPI
document describes. The requests are in known_bad.json; add each new 5xx that fuzzing finds.

An entry is {"method", "path", "why"} plus one body: `body`, a JSON value sent as JSON (its
integers keep every digit), or `raw`, text sent as it is with content-type application/json:
a string, or a list of [text, times] pieces for bodies too long to write out (20,000 `[`).
A `path` may hold `{model_id}`; `path_parameters` fills it in.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import FUZZ_MAX_NEW_TOKENS
from tests.fuzz.known_bad import KNOWN_BAD_FILE, load_known_bad, request_content
from tests.fuzz.support import schema, server_log_since
from tests.integration.conftest import Server
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.fuzz

LOADED_MODELS = (GPT_ID, BIGRAM_ID)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def checked_known_bad() -> list[dict[str, Any]]:
    entries = load_known_bad()
    for i, entry in enumerate(entries):
        where = f"{KNOWN_BAD_FILE.name}[{i}]"
        assert {"method", "path", "why"} <= entry.keys(), f"{where} needs method, path and why"
        assert ("body" in entry) != ("raw" in entry), f"{where} needs exactly one of body, raw"
        assert entry["path"] in schema.raw_schema["paths"], f"{where}: undocumented path"
    return entries


KNOWN_BAD = checked_known_bad()


def entry_id(index: int, entry: dict[str, Any]) -> str:
    content = request_content(entry).decode()
    shown = content if len(content) <= 80 else f"{content[:60]}...({len(content)} chars)"
    return f"{index}: {entry['method']} {entry['path']} {shown}"


@pytest.mark.parametrize("entry", KNOWN_BAD, ids=[entry_id(i, e) for i, e in enumerate(KNOWN_BAD)])
def test_known_bad_request_gets_a_documented_answer(
    entry: dict[str, Any], fuzz_server: Server
) -> None:
    method, path = entry["method"], entry["path"]
    path_parameters = entry.get("path_parameters", {})
    content = request_content(entry)
    log_start = len(fuzz_server.log())
    try:
        response = httpx.request(
            method,
            fuzz_server.url + path.format(**path_parameters),
            content=content,
            headers={"content-type": "application/json"},
            timeout=60,
        )
    except httpx.TransportError as error:
        broken_off = error
    else:
        broken_off = None
    if broken_off is not None:
        pytest.fail(
            f"the server broke off its answer ({broken_off!r}); why this request is here: "
            f"{entry['why']}\nserver log:\n{server_log_since(fuzz_server, log_start)}"
        )
    assert response.status_code < 500, (
        f"{response.status_code} {response.text[:500]}\nwhy this request is here: "
        f"{entry['why']}\nserver log:\n{server_log_since(fuzz_server, log_start)}"
    )
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"], response.text
    case: schemathesis.Case = schema[path][method].Case(
        path_parameters=path_parameters or None, media_type="application/json"
    )
    case.validate_response(response, checks=CHECKS)


GENERATING = ("/v1/generate", "/v1/completions")
GOOD_REQUESTS = 8


def test_known_bad_requests_leave_the_requests_beside_them_alone(fuzz_server: Server) -> None:
    """Each model's engine decodes its running requests as one batch: the known-bad requests
    to the generating routes, sent while valid generations run, must fail alone (on the
    unfixed code one top_k past int64 failed the whole decode step: every request in the
    batch answered 500). Whether a bad request lands mid-batch is up to timing; the check,
    that every valid request gets its 200, is not."""
    bad = [e for e in KNOWN_BAD if e["path"] in GENERATING and isinstance(e.get("body"), dict)]
    assert bad, "known_bad.json has no generation requests to send"
    log_start = len(fuzz_server.log())

    def generate(seed: int, model: str) -> httpx.Response:
        body = {"model": model, "prompt": "a", "max_new_tokens": FUZZ_MAX_NEW_TOKENS, "seed": seed}
        return httpx.post(f"{fuzz_server.url}/v1/generate", json=body, timeout=60)

    def send(entry: dict[str, Any]) -> int:
        time.sleep(0.02)  # after the valid generations have started
        return httpx.post(
            fuzz_server.url + entry["path"],
            content=request_content(entry),
            headers={"content-type": "application/json"},
            timeout=60,
        ).status_code

    with ThreadPoolExecutor(max_workers=GOOD_REQUESTS + len(bad)) as pool:
        good = [
            pool.submit(generate, seed, LOADED_MODELS[seed % 2]) for seed in range(GOOD_REQUESTS)
        ]
        for entry in bad:
            pool.submit(send, entry)
        answers = [future.result() for future in good]
    failed = [(r.status_code, r.text[:200]) for r in answers if r.status_code != 200]
    assert not failed, f"{failed}\nserver log:\n{server_log_since(fuzz_server, log_start)}"
