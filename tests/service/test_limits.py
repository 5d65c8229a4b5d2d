"""Rate limiting per client, CORS, and the per-request timeout."""

import asyncio

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.settings import Settings, SettingsError
from tests.service.test_app import assert_error
from tests.service.tiny_models import GPT_ID

pytestmark = pytest.mark.anyio


async def test_rate_limit_per_client_with_retry_after(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, rate_limit="3/minute", api_keys="k1,k2"))
    async with AsyncTestClient(app=app) as client:
        one = {"authorization": "Bearer k1"}
        for _ in range(3):
            assert (await client.get("/v1/models", headers=one)).status_code == 200
        response = await client.get("/v1/models", headers=one)
        message = assert_error(response, 429, "rate_limited")
        assert "TINYGPT_RATE_LIMIT" in message
        assert 1 <= int(response.headers["retry-after"]) <= 60
        # another key is another client; the open routes are not limited
        assert (await client.get("/v1/models", headers={"authorization": "Bearer k2"})).is_success
        for _ in range(5):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 200


def test_bad_rate_limit_is_refused():
    with pytest.raises(SettingsError, match="TINYGPT_RATE_LIMIT"):
        Settings.from_env(environ={"TINYGPT_RATE_LIMIT": "lots"})


async def test_cors_off_by_default_and_on_for_listed_origins(settings: Settings):
    origin = {"origin": "https://example.org"}
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/v1/models", headers=origin)
        assert "access-control-allow-origin" not in response.headers
    app = create_app(msgspec.structs.replace(settings, cors_origins="https://example.org"))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/v1/models", headers=origin)
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        response = await client.get("/v1/models", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_timeout_answers_what_was_produced_or_504(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, request_timeout=1e-6))
    request = {"model": GPT_ID, "prompt": "a", "max_new_tokens": 1000}
    async with AsyncTestClient(app=app) as client:
        response = await client.post("/v1/generate", json=request)
        if response.status_code == 504:
            assert "TINYGPT_REQUEST_TIMEOUT" in assert_error(response, 504, "timeout")
        else:
            body = response.json()
            assert body["finish_reason"] == "timeout" and len(body["token_ids"]) < 1000
        response = await client.post("/v1/generate", json=request | {"stream": True})
        assert response.status_code == 200
        done = response.text.split("event: done")[1]
        assert '"finish_reason":"timeout"' in done


async def test_openai_completions_time_out_every_choice(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, request_timeout=1e-6))
    request = {"model": GPT_ID, "prompt": "a", "max_tokens": 1000, "n": 2, "stream": True}
    async with AsyncTestClient(app=app) as client:
        response = await client.post("/v1/completions", json=request)
        assert response.status_code == 200
        chunks = [
            msgspec.json.decode(line.removeprefix("data: "))
            for line in response.text.splitlines()
            if line.startswith("data: {")
        ]
        reasons = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks}
        assert reasons == {0: "timeout", 1: "timeout"}
        assert response.text.rstrip().endswith("data: [DONE]")


async def test_generous_timeout_changes_nothing(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.post(
            "/v1/generate", json={"model": GPT_ID, "prompt": "a", "max_new_tokens": 5}
        )
        assert response.json()["finish_reason"] in ("length", "stop")


# -- fair shares ------------------------------------------------------------------------


async def test_a_client_over_its_concurrent_sequences_is_refused_until_some_end(settings):
    import string

    from models.gpt import GPT, GPTConfig
    from models.tokenizer import CharTokenizer
    from service.engine import Engine, EngineConfig, GenerationRequest
    from service.exceptions import ClientBusyError, InvalidRequestError
    from service.limits import Admission
    from service.shared_limits import LocalLimits

    tokenizer = CharTokenizer(sorted(set(string.ascii_lowercase)))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1,
                          n_embd=8))  # fmt: skip
    engine = Engine(model, tokenizer, EngineConfig(max_running=4, max_waiting=4))
    engine.start()
    counts = LocalLimits()
    admission = Admission(msgspec.structs.replace(settings, max_client_sequences=3), counts)
    forever = GenerationRequest([0], max_new_tokens=10**9)
    try:
        [running] = await admission.submit(engine, [forever], "alice", "prompt")
        with pytest.raises(ClientBusyError, match="already has 1 sequences"):
            await admission.submit(engine, [forever] * 3, "alice", "prompt")
        others = await admission.submit(engine, [forever] * 3, "bob", "prompt")  # his own
        with pytest.raises(InvalidRequestError, match="4 sequences"):  # never admissible
            await admission.submit(engine, [forever] * 4, "carol", "prompt")
        assert counts.held == {"alice": 1, "bob": 3}
        running.cancel()
        await running.collect()
        assert counts.held == {"bob": 3}  # released before the reader saw the end
        short = [GenerationRequest([0], max_new_tokens=2)] * 3
        await admission.submit(engine, short, "alice", "p")
        for stream in others:
            stream.cancel()
    finally:
        await asyncio.to_thread(engine.stop)


async def test_the_rate_limit_answers_openai_routes_in_openais_envelope(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, rate_limit="2/minute"))
    body = {"model": GPT_ID, "prompt": "a", "max_tokens": 1}
    async with AsyncTestClient(app=app) as client:
        for _ in range(2):
            assert (await client.post("/v1/completions", json=body)).status_code == 200
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            response = await client.post(path, json=body)
            assert response.status_code == 429 and response.headers["retry-after"]
            error = response.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
            assert "TINYGPT_RATE_LIMIT" in error["message"]
        native = await client.post("/v1/generate", json={"model": GPT_ID})
        assert native.status_code == 429 and native.json()["error"]["type"] == "rate_limited"
