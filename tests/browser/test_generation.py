"""Generation in the playground: the text streams in token by token, and it is the API's text."""

from __future__ import annotations

import json

import pytest

from tests.browser.pages import GPT, pick_model, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def sse_events(body: str) -> list[tuple[str, dict]]:
    """`(event, data)` pairs of a whole text/event-stream body."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), "message")
        data = "\n".join(ln[5:].removeprefix(" ") for ln in lines if ln.startswith("data:"))
        events.append((name, json.loads(data)))
    return events


def test_the_streamed_text_is_the_apis_text_for_the_same_seed(page, api, artifacts):
    params = {"model": GPT, "prompt": "ROMEO:\n", "max_new_tokens": 240, "temperature": 0.8,
              "top_k": 40, "top_p": 0.95, "seed": 1234}  # fmt: skip
    pick_model(page, GPT)
    page.fill("#prompt", params["prompt"])
    page.fill("#max-tokens", str(params["max_new_tokens"]))
    page.fill("#temperature", str(params["temperature"]))
    page.fill("#top-k", str(params["top_k"]))
    page.fill("#top-p", str(params["top_p"]))
    page.fill("#seed", str(params["seed"]))
    with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as answer:
        page.click("#generate")
    page.wait_for_selector("#completion[data-state=done]")
    expected = api.post("/v1/generate", json=params).json()

    # What the page shows is what the API returns without streaming...
    assert page.text_content("#completion") == expected["text"]
    assert page.text_content("#prompt-echo") == params["prompt"]
    assert page.get_attribute("#completion", "data-tokens") == str(len(expected["token_ids"]))
    assert f"{len(expected['token_ids'])} tokens" in page.text_content("#gen-status")
    # ...and it came token by token: one `token` event each, then `done` with that response.
    response = answer.value
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text())
    tokens = [data for name, data in events if name == "token"]
    assert [t["index"] for t in tokens] == list(range(len(expected["token_ids"])))
    assert [t["id"] for t in tokens] == expected["token_ids"]
    assert "".join(t["text"] for t in tokens) == expected["text"]
    assert events[-1] == ("done", expected)
    assert page.is_enabled("#generate") and page.is_disabled("#stop")
    shot(page, artifacts, "generate.png")


def test_a_rejected_request_shows_the_apis_message(page, api, page_log):
    page_log.allow("status of 400")  # Chromium logs every 4xx fetch to the console
    page.fill("#temperature", "-1")
    page.click("#generate")
    page.wait_for_selector("#gen-error:not([hidden])")
    body = {"model": GPT, "prompt": page.input_value("#prompt"), "temperature": -1, "stream": True}
    message = api.post("/v1/generate", json=body).json()["error"]["message"]
    assert "temperature" in message
    assert page.text_content("#gen-error") == message
    assert page.get_attribute("#completion", "data-state") == "error"
