"""POST /admin/reload: admin key, swap what verifies, refuse what does not."""

import json
import shutil
from pathlib import Path

import anyio
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.engine import Engine
from service.registry import ModelRegistry
from service.settings import Settings
from tests.service.test_app import assert_error
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio

ADMIN = {"authorization": "Bearer admin-key"}


@pytest.fixture
def root(checkpoint_folder: Path, tmp_path: Path) -> Path:
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_folder, root)
    return root


@pytest.fixture
async def client(settings: Settings, root: Path):
    app = create_app(
        msgspec.structs.replace(settings, checkpoints=str(root), admin_keys="admin-key")
    )
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_off_without_admin_keys(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        message = assert_error(await client.post("/admin/reload"), 403, "forbidden")
        assert "TINYGPT_ADMIN_KEYS" in message


async def test_needs_the_admin_key(client):
    for headers in ({}, {"authorization": "Bearer not-it"}):
        response = await client.post("/admin/reload", headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_unchanged_checkpoints_stay(client):
    response = await client.post("/admin/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "reloaded": [],
        "refused": [],
        "unchanged": [BIGRAM_ID, GPT_ID],
        "models": [BIGRAM_ID, GPT_ID],
    }


async def test_changed_and_new_are_swapped_in_tampered_refused(client, root: Path):
    # bigram-tiny now holds the GPT's checkpoint; a new folder appears; the GPT is tampered.
    shutil.rmtree(root / BIGRAM_ID)
    shutil.copytree(root / GPT_ID, root / BIGRAM_ID)
    shutil.copytree(root / GPT_ID, root / "gpt-copy")
    weights = root / GPT_ID / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))

    response = await client.post("/admin/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reloaded"] == [BIGRAM_ID, "gpt-copy"]
    assert [r["model"] for r in body["refused"]] == [GPT_ID]
    assert (
        GPT_ID in body["refused"][0]["reason"] and "keeps serving" in body["refused"][0]["reason"]
    )
    assert body["models"] == [BIGRAM_ID, GPT_ID, "gpt-copy"]

    models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert models[BIGRAM_ID]["kind"] == "gpt"
    for model in (BIGRAM_ID, GPT_ID, "gpt-copy"):
        response = await client.post(
            "/v1/generate", json={"model": model, "prompt": "a", "max_new_tokens": 4}
        )
        assert response.status_code == 200, response.text


async def test_a_stream_running_across_a_reload_completes(client, root: Path):
    request = {"model": GPT_ID, "prompt": "a", "max_new_tokens": 200, "stream": True}
    async with client.stream("POST", "/v1/generate", json=request) as stream:
        lines = stream.aiter_lines()
        first = await anext(lines)
        assert first.startswith("event: token")
        # the GPT's folder now holds the bigram: a changed checkpoint, swapped in
        shutil.rmtree(root / GPT_ID)
        shutil.copytree(root / BIGRAM_ID, root / GPT_ID)
        response = await client.post("/admin/reload", headers=ADMIN)
        assert response.json()["reloaded"] == [GPT_ID]
        rest = [line async for line in lines]
    assert "event: done" in rest
    done = rest[rest.index("event: done") + 1]
    assert '"finish_reason":"cancelled"' not in done


async def test_overlapping_reloads_leave_no_engine_running_unserved(
    settings: Settings, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    started: list[Engine] = []
    real_start = Engine.start

    def start(engine: Engine) -> None:
        started.append(engine)
        real_start(engine)

    monkeypatch.setattr(Engine, "start", start)
    registry = ModelRegistry(msgspec.structs.replace(settings, checkpoints=str(root)))
    await registry.load()

    variants = []  # what the bigram folder will hold in turn: checkpoints that all differ
    for i in range(6):
        variant = shutil.copytree(root / GPT_ID, tmp_path / f"variant-{i}")
        manifest = json.loads((variant / "manifest.json").read_text())
        (variant / "manifest.json").write_text(json.dumps({**manifest, "note": i}))
        variants.append(variant)

    async def change_then_reload(i: int) -> None:
        await anyio.sleep(i * 0.005)  # the reloads overlap: each takes longer than that
        shutil.rmtree(root / BIGRAM_ID)
        shutil.copytree(variants[i], root / BIGRAM_ID)
        await registry.reload()

    async with anyio.create_task_group() as group:
        for i in range(6):
            group.start_soon(change_then_reload, i)
    served = {id(model.engine) for model in registry.loaded_models().values()}
    for engine in started:
        if id(engine) not in served:
            assert engine.thread is not None
            engine.thread.join(timeout=30)
            assert not engine.running, "an engine no longer served is still running"
    assert len(started) > len(served)  # the reloads did replace engines
    assert {m.engine.running for m in registry.loaded_models().values()} == {True}
    await registry.unload()
    assert not any(engine.running for engine in started)
