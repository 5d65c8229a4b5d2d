"""Every kind of bad request gets a 4xx in the one error shape: never a 500, never a traceback."""

import json

import pytest

from tests.service.tiny_models import BIGRAM_ID, GPT_ID

# (test id, path, JSON body, status, error type, param, words the message must hold)
CASES = [
    ("unknown model", "/v1/generate", {"model": "gpt-huge"}, 404, "not_found", "model",
     ["'gpt-huge'", BIGRAM_ID, GPT_ID]),
    ("unknown model, next-token", "/v1/next-token", {"model": "nope", "context": "a"}, 404,
     "not_found", "model", ["available models"]),
    ("unknown model, tokenize", "/v1/tokenize", {"model": "nope", "text": "a"}, 404, "not_found",
     "model", ["available models"]),
    ("character outside the vocabulary", "/v1/generate", {"model": GPT_ID, "prompt": "hi ☃"},
     400, "invalid_request", "prompt", ["'☃' at position 3"]),
    ("character outside the vocabulary, context", "/v1/next-token",
     {"model": BIGRAM_ID, "context": "~"}, 400, "invalid_request", "context", ["'~'"]),
    ("character outside the vocabulary, tokenize", "/v1/tokenize",
     {"model": GPT_ID, "text": "a\tb"}, 400, "invalid_request", "text", ["'\\t'"]),
    ("token of two characters", "/v1/neighbours", {"model": GPT_ID, "token": "ab"}, 400,
     "invalid_request", "token", ["exactly one token", "2 tokens"]),
    ("empty token", "/v1/neighbours", {"model": GPT_ID, "token": ""}, 400, "invalid_request",
     "token", ["exactly one token", "0 tokens"]),
    ("token outside the vocabulary", "/v1/neighbours", {"model": BIGRAM_ID, "token": "☃"}, 400,
     "invalid_request", "token", ["'☃'"]),
    ("analogy token of two characters", "/v1/neighbours",
     {"model": GPT_ID, "positive": ["a", "bc"]}, 400, "invalid_request", "positive[1]",
     ["exactly one token"]),
    ("token and analogy at once", "/v1/neighbours",
     {"model": GPT_ID, "token": "a", "negative": ["b"]}, 400, "invalid_request", "token",
     ["not both"]),
    ("neither token nor analogy", "/v1/neighbours", {"model": GPT_ID}, 400, "invalid_request",
     "token", ["give a `token`"]),
    ("max_new_tokens beyond the cap", "/v1/generate", {"model": GPT_ID, "max_new_tokens": 1025},
     400, "invalid_request", "max_new_tokens", ["1025", "cap of 1024"]),
    ("max_new_tokens zero", "/v1/generate", {"model": GPT_ID, "max_new_tokens": 0}, 400,
     "invalid_request", "max_new_tokens", [">= 1"]),
    ("negative temperature", "/v1/generate", {"model": GPT_ID, "temperature": -0.5}, 400,
     "invalid_request", "temperature", [">= 0"]),
    ("zero temperature for a distribution", "/v1/next-token",
     {"model": GPT_ID, "temperature": 0}, 400, "invalid_request", "temperature", [">= 1e-06"]),
    ("top_p zero", "/v1/generate", {"model": GPT_ID, "top_p": 0}, 400, "invalid_request",
     "top_p", ["> 0"]),
    ("top_p above one", "/v1/generate", {"model": GPT_ID, "top_p": 1.5}, 400, "invalid_request",
     "top_p", ["<= 1"]),
    ("top_k zero", "/v1/generate", {"model": GPT_ID, "top_k": 0}, 400, "invalid_request",
     "top_k", [">= 1"]),
    ("next-token top_k zero", "/v1/next-token", {"model": GPT_ID, "top_k": 0}, 400,
     "invalid_request", "top_k", [">= 1"]),
    ("k zero", "/v1/neighbours", {"model": GPT_ID, "token": "a", "k": 0}, 400,
     "invalid_request", "k", [">= 1"]),
    ("unknown metric", "/v1/neighbours", {"model": GPT_ID, "token": "a", "metric": "l1"}, 400,
     "invalid_request", "metric", ["'l1'"]),
    ("prompt longer than the cap", "/v1/generate", {"model": GPT_ID, "prompt": "a" * 4097},
     400, "invalid_request", "prompt", ["4097 characters", "4096"]),
    ("context longer than the cap", "/v1/next-token", {"model": GPT_ID, "context": "a" * 5000},
     400, "invalid_request", "context", ["5000 characters"]),
    ("unknown field", "/v1/generate", {"model": GPT_ID, "max_tokens": 5}, 400,
     "invalid_request", "max_tokens", ["unknown field `max_tokens`", "max_new_tokens"]),
    ("missing field", "/v1/tokenize", {"model": GPT_ID}, 400, "invalid_request", "text",
     ["missing required field `text`"]),
    ("number as a string", "/v1/generate", {"model": GPT_ID, "max_new_tokens": "5"}, 400,
     "invalid_request", "max_new_tokens", ["Expected `int`, got `str`"]),
    ("string where a number goes", "/v1/generate", {"model": GPT_ID, "temperature": "hot"},
     400, "invalid_request", "temperature", ["Expected `float`"]),
    ("number where text goes", "/v1/tokenize", {"model": GPT_ID, "text": 42}, 400,
     "invalid_request", "text", ["Expected `str`"]),
    ("fractional seed", "/v1/generate", {"model": GPT_ID, "seed": 1.5}, 400, "invalid_request",
     "seed", ["Expected `int", "got `float`"]),
    ("list of the wrong items", "/v1/detokenize", {"model": GPT_ID, "ids": [1, "a"]}, 400,
     "invalid_request", "ids[1]", ["Expected `int`"]),
    ("negative id", "/v1/detokenize", {"model": GPT_ID, "ids": [-1]}, 400, "invalid_request",
     "ids[0]", [">= 0"]),
    ("id outside the vocabulary", "/v1/detokenize", {"model": GPT_ID, "ids": [0, 10_000]}, 400,
     "invalid_request", "ids[1]", ["10000"]),
    ("model of the wrong type", "/v1/generate", {"model": ["gpt-tiny"]}, 400,
     "invalid_request", "model", ["Expected `str`"]),
    ("array body", "/v1/generate", [GPT_ID], 400, "invalid_request", None, ["JSON object"]),
    ("empty stop string", "/v1/generate", {"model": GPT_ID, "stop": [""]}, 400,
     "invalid_request", "stop[0]", ["length >= 1"]),
]  # fmt: skip


def assert_error(response, status: int, error_type: str, param, words=()) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param"}
    assert (body["error"]["type"], body["error"]["param"]) == (error_type, param)
    for word in words:
        assert word in body["error"]["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "param", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request(client, path, body, status, error_type, param, words):
    assert_error(client.post(path, json=body), status, error_type, param, words)


@pytest.mark.parametrize(
    ("body", "words"),
    [(b'{"model": "gpt-tiny",', ["not valid JSON"]), (b"model=gpt-tiny", ["not valid JSON"]),
     (b"", ["body is empty"]), (b"\xff\xfe{}", ["not valid JSON"])],
)  # fmt: skip
def test_malformed_json(client, body, words):
    response = client.post(
        "/v1/generate", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request", None, words)


def test_a_body_over_64_kib_is_413(client):
    body = json.dumps({"model": GPT_ID, "text": "a" * 64 * 1024}).encode()
    response = client.post(
        "/v1/tokenize", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "request_too_large", None, ["64 KiB"])


def test_a_body_just_under_64_kib_is_read(client):
    padding = " " * (64 * 1024 - 100)
    body = f'{{"model": "{GPT_ID}", {padding} "text": "ok"}}'.encode()
    assert len(body) < 64 * 1024
    response = client.post(
        "/v1/tokenize", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["tokens"] == ["o", "k"]


def test_an_unknown_path_is_404(client):
    assert_error(client.get("/v1/generat"), 404, "not_found", None, ["/docs"])


def test_a_wrong_method_is_405(client):
    assert_error(client.get("/v1/generate"), 405, "method_not_allowed", None, ["POST"])
    assert_error(client.delete("/v1/models"), 405, "method_not_allowed", None, ["GET"])


def test_the_server_survives_all_of_it(client):
    assert client.get("/ready").status_code == 200
