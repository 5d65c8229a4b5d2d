"""`/v1/generate` with `stream: true`: SSE framing, equality with the whole response, errors
before the stream, and a disconnect that frees the engine slot."""

import json
import re
import time

import httpx
import pytest

from tests.integration.conftest import SHIPPED_GPT
from tests.service.tiny_models import BIGRAM_ID, GPT_ID


def parse_sse(raw: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of an SSE body; every event must have both fields."""
    events = []
    for block in raw.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) == {"event", "data"}, block
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_streamed_tokens_add_up_to_the_whole_response(client, model):
    body = {"model": model, "prompt": "Th", "max_new_tokens": 40, "seed": 5, "temperature": 0.9}
    whole = client.post("/v1/generate", json=body).json()
    response = client.post("/v1/generate", json=body | {"stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    tokens, (last_event, done) = events[:-1], events[-1]
    assert last_event == "done" and done == whole
    assert [event for event, _ in tokens] == ["token"] * 40
    assert [data["index"] for _, data in tokens] == list(range(40))
    assert [data["id"] for _, data in tokens] == whole["token_ids"]
    assert "".join(data["text"] for _, data in tokens) == whole["text"]


def test_a_stop_string_ends_the_stream(client):
    body = {"model": BIGRAM_ID, "max_new_tokens": 300, "seed": 21}
    full = client.post("/v1/generate", json=body).json()
    stop = full["text"][20:22]
    events = parse_sse(client.post("/v1/generate", json=body | {"stop": stop, "stream": True}).text)
    done = events[-1][1]
    assert (
        done["finish_reason"] == "stop" and done["text"] == full["text"][: full["text"].index(stop)]
    )
    assert "".join(data["text"] for event, data in events[:-1]) == done["text"]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": "nope"}, "model"), ({"model": GPT_ID, "top_p": 0}, "top_p"),
     ({"model": GPT_ID, "prompt": "a~"}, "prompt")],
)  # fmt: skip
def test_bad_input_is_refused_before_the_stream_starts(client, body, param):
    response = client.post("/v1/generate", json=body | {"stream": True})
    assert response.status_code in (400, 404)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == param


def engine_metric(client: httpx.Client, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    # Every series also names the replica that answered (it sorts after these labels).
    series = rf'^tinygpt_engine_{name}{{{re.escape(wanted)},replica="[^"]*"}} (\S+)$'
    pattern = re.compile(series, re.M)
    match = pattern.search(client.get("/metrics").text)
    assert match, f"no tinygpt_engine_{name}{{{wanted}}} in /metrics"
    return float(match.group(1))


def test_a_client_that_disconnects_frees_its_slot(shipped_gpt_server):
    server = shipped_gpt_server
    client = httpx.Client(base_url=server.url, timeout=30)
    body = {"model": SHIPPED_GPT, "max_new_tokens": 1024, "seed": 1, "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=30) as streaming,
        streaming.stream("POST", "/v1/generate", json=body) as response,
    ):
        received = 0
        for line in response.iter_lines():
            received += line.startswith("event: token")
            if received == 5:
                # still connected: generating (once it leaves, the slot may go at once)
                assert engine_metric(client, "running_sequences", model=SHIPPED_GPT) == 1
                break
    # The connection is closed: the slot must be free again within moments, long before the
    # 1024 tokens a finished request would take.
    closed_at = time.monotonic()
    while engine_metric(client, "running_sequences", model=SHIPPED_GPT):
        assert time.monotonic() - closed_at < 5, "the slot was not freed"
        time.sleep(0.01)
    labels = {"model": SHIPPED_GPT, "finish_reason": "cancelled"}
    assert engine_metric(client, "finished_requests_total", **labels) == 1
    assert engine_metric(client, "generated_tokens_total", model=SHIPPED_GPT) < 1024
    client.close()
