"""The Litestar app in-process: readiness, dependency wiring, the one error shape, OpenAPI."""

import gc
import threading

import anyio
import msgspec
import pytest
from litestar.testing import AsyncTestClient

import service.registry
from service.app import create_app
from service.exceptions import NoModelsLoadedError
from service.settings import Settings
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


def assert_error(response, status: int, error_type: str, param: str | None = None) -> str:
    """Check the one error shape and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param"}
    assert body["error"]["type"] == error_type
    assert body["error"]["param"] == param
    assert "Traceback" not in response.text
    return body["error"]["message"]


async def test_health_and_ready_once_loaded(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": [BIGRAM_ID, GPT_ID]}


async def test_the_collector_skips_what_start_up_made_until_the_app_stops(settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        model = client.app.state.registry.get(GPT_ID)
        assert not any(o is model for o in gc.get_objects())  # frozen: no full collection walks it
    assert any(o is model for o in gc.get_objects())


async def test_ready_is_503_before_the_lifespan_runs(settings):
    client = AsyncTestClient(app=create_app(settings))  # not entered: no lifespan, no models
    assert_error(await client.get("/ready"), 503, "not_ready")
    assert (await client.get("/health")).status_code == 200
    response = await client.post("/v1/tokenize", json={"model": GPT_ID, "text": "a"})
    assert_error(response, 503, "not_ready")


async def test_ready_turns_200_when_a_slow_load_finishes(settings, monkeypatch):
    release = threading.Event()
    real_load = service.registry.load_checkpoint

    def slow_load(path, device):
        release.wait(timeout=30)
        return real_load(path, device)

    monkeypatch.setattr(service.registry, "load_checkpoint", slow_load)
    app = create_app(settings)
    client = AsyncTestClient(app=app)
    started = anyio.Event()

    async def serve() -> None:
        async with app.lifespan():
            started.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve)
        await anyio.sleep(0.05)
        assert not started.is_set()
        assert_error(await client.get("/ready"), 503, "not_ready")
        release.set()
        await started.wait()
        assert (await client.get("/ready")).status_code == 200
        tasks.cancel_scope.cancel()


async def test_the_app_refuses_to_start_when_no_checkpoint_loads(tmp_path):
    (tmp_path / "empty-model").mkdir()
    app = create_app(Settings(checkpoints=str(tmp_path), device="cpu", compile_decode=False))
    with pytest.raises(BaseExceptionGroup) as caught:
        async with app.lifespan():
            pass
    assert caught.group_contains(NoModelsLoadedError, match="empty-model: .* is missing")


async def test_models_lists_metrics_and_limits(client):
    body = (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == [BIGRAM_ID, GPT_ID]
    assert body["limits"] == {
        "max_new_tokens": 1024,
        "max_prompt_chars": 4096,
        "max_request_sequences": 64,
        "max_client_sequences": 128,
    }
    gpt = body["data"][1]
    assert {"kind", "vocab_size", "parameters", "context_length", "device", "metrics"} <= set(gpt)
    assert gpt["device"] == "cpu" and "val_loss" in gpt["metrics"]


async def test_generate_counts_its_tokens_in_metrics(client):
    response = await client.post(
        "/v1/generate", json={"model": GPT_ID, "prompt": "a", "max_new_tokens": 7, "seed": 1}
    )
    assert response.status_code == 200
    metrics = (await client.get("/metrics")).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith(f'tinygpt_generated_tokens_total{{model="{GPT_ID}",replica=')
    )
    assert float(line.split()[-1]) >= 7
    assert "tinygpt_http_requests_total" in metrics


async def test_validation_errors_use_the_error_shape(client):
    response = await client.post("/v1/generate", json={"model": GPT_ID, "temperature": -1})
    message = assert_error(response, 400, "invalid_request", "temperature")
    assert ">= 0" in message
    response = await client.post(
        "/v1/generate", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_error(response, 400, "invalid_request")


async def test_routing_errors_use_the_error_shape(client):
    assert "/docs" in assert_error(await client.get("/v2/models"), 404, "not_found")
    response = await client.get("/v1/generate")
    assert "POST" in assert_error(response, 405, "method_not_allowed")
    response = await client.post("/v1/tokenize", json={"model": GPT_ID, "text": "a" * 70_000})
    assert "64 KiB" in assert_error(response, 413, "request_too_large")


async def test_an_unexpected_error_is_a_500_without_details(client, caplog):
    def explode(model_id):
        raise RuntimeError("secret internals")

    client.app.state.registry.get = explode
    response = await client.post("/v1/generate", json={"model": GPT_ID})
    message = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "server log" in message
    assert "secret internals" in caplog.text


async def test_openapi_documents_every_operation(client):
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/docs/openapi.json")).json()
    operations = {
        op["operationId"]: op for path in schema["paths"].values() for op in path.values()
    }
    expected = {"health", "ready", "listModels", "generate", "nextToken", "neighbours",
                "tokenize", "detokenize"}  # fmt: skip
    assert expected <= set(operations)
    assert all(operations[name].get("description") for name in expected)
    generate = schema["components"]["schemas"]["GenerateRequest"]
    assert generate["properties"]["top_p"]["exclusiveMinimum"] == 0
    assert "400" in operations["generate"]["responses"]


async def test_every_response_names_its_replica(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, replica_id="r-7", compile_decode=False))
    async with AsyncTestClient(app=app) as client:
        for path in ("/health", "/v1/models", "/no/such/path", "/metrics"):
            assert (await client.get(path)).headers["x-replica-id"] == "r-7"
        error = await client.post("/v1/generate", json={"model": "nope"})
        assert error.status_code == 404 and error.headers["x-replica-id"] == "r-7"
        metrics = (await client.get("/metrics")).text
        series = [line for line in metrics.splitlines() if line and not line.startswith("#")]
        assert series and all('replica="r-7"' in line for line in series)
