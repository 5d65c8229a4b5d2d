"""POST /v1/generate in-process: reproducibility, stop strings, limits and fair shares."""

from __future__ import annotations

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings
from tests.service.test_app import assert_error
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio


def app_client(settings: Settings, **changes: object) -> AsyncTestClient:
    return AsyncTestClient(app=create_app(msgspec.structs.replace(settings, **changes)))


@pytest.fixture
async def client(settings: Settings):
    async with app_client(settings) as client:
        yield client


async def generate(client: AsyncTestClient, **body: object) -> dict:
    response = await client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
async def test_generation_is_reproducible_with_a_seed(client, model):
    request = dict(model=model, prompt="The ", max_new_tokens=30, seed=11)
    first = await generate(client, **request)
    assert first == await generate(client, **request)
    assert len(first["token_ids"]) == 30 and first["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 4, "completion_tokens": 30}


async def test_an_empty_prompt_starts_from_the_start_token(client):
    result = await generate(client, model=GPT_ID, max_new_tokens=5, seed=1)
    assert result["usage"]["prompt_tokens"] == 0 and len(result["token_ids"]) == 5


async def test_stop_cuts_the_text_before_the_first_stop_string(client):
    full = await generate(client, model=BIGRAM_ID, max_new_tokens=200, seed=3)
    stop = full["text"][10:12]
    cut = await generate(client, model=BIGRAM_ID, max_new_tokens=200, seed=3, stop=[stop, "\u2603"])
    index = full["text"].index(stop)
    assert cut["text"] == full["text"][:index] and cut["finish_reason"] == "stop"
    assert cut["token_ids"] == full["token_ids"][:index]
    # Usage counts every token generated, the stop string's too (as OpenAI's API does).
    assert cut["usage"]["completion_tokens"] == index + len(stop)


async def test_max_new_tokens_above_the_cap_is_refused(settings):
    async with app_client(settings, max_new_tokens=8) as client:
        response = await client.post("/v1/generate", json={"model": GPT_ID, "max_new_tokens": 9})
    assert "cap of 8" in assert_error(response, 400, "invalid_request", "max_new_tokens")


async def test_a_prompt_longer_than_the_limit_is_refused(settings):
    async with app_client(settings, max_prompt_chars=5) as client:
        response = await client.post("/v1/generate", json={"model": GPT_ID, "prompt": "abcdef"})
    assert "6 characters" in assert_error(response, 400, "invalid_request", "prompt")


async def test_a_top_k_above_the_vocabulary_keeps_every_token(client):
    body = dict(model=GPT_ID, prompt="The ", max_new_tokens=20, seed=4)
    assert await generate(client, **body, top_k=2**31 - 1) == await generate(client, **body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", 1180591620717411303424),
        ("max_new_tokens", 2**64),
        ("seed", -(2**70)),
        ("temperature", 1e300),
        ("repetition_penalty", 0.0),
        ("stop", ["x"] * 5),
        ("stop", "y" * 129),
    ],
)
async def test_out_of_range_numbers_and_lists_are_a_400(client, field, value):
    response = await client.post("/v1/generate", json={"model": GPT_ID, field: value})
    assert assert_error(response, 400, "invalid_request", field)


async def test_deeply_nested_json_is_a_400(client):
    for body in ("[" * 20_000 + "]" * 20_000, '{"a":' * 5_000 + "1" + "}" * 5_000):
        response = await client.post(
            "/v1/generate", content=body, headers={"content-type": "application/json"}
        )
        assert "levels deep" in assert_error(response, 400, "invalid_request")


async def test_too_many_sequences_for_one_request_is_a_400_at_once(settings):
    async with app_client(settings, max_request_sequences=6) as client:
        body = {"model": GPT_ID, "prompt": ["a", "b", "c", "d"], "n": 2, "max_tokens": 5}
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert "8 sequences" in error["message"] and "6" in error["message"]
        body["n"] = 1
        assert (await client.post("/v1/completions", json=body)).status_code == 200
