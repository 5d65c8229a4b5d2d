"""API keys: /v1/* needs a Bearer key when keys are configured; the open routes stay open."""

from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.security import key_matches
from service.settings import Settings, SettingsError
from tests.service.test_app import assert_error
from tests.service.tiny_models import GPT_ID

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789"
OTHER = "sk-other-abcdef"


def keyed(settings: Settings, **changes) -> Settings:
    return msgspec.structs.replace(settings, api_keys=f"{KEY}, {OTHER}", **changes)


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(keyed(settings))) as client:
        yield client


async def test_v1_needs_a_key(client, caplog):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        response = await client.get("/v1/models", headers=headers)
        message = assert_error(response, 401, "unauthorized")
        assert "Authorization: Bearer" in message
        assert response.headers["www-authenticate"] == "Bearer"
    response = await client.post("/v1/generate", json={"model": GPT_ID, "prompt": "a"})
    assert_error(response, 401, "unauthorized")
    assert "wrong" not in caplog.text and KEY not in caplog.text


async def test_either_key_opens_v1(client):
    for key in (KEY, OTHER):
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
    response = await client.post(
        "/v1/generate",
        json={"model": GPT_ID, "prompt": "a", "max_new_tokens": 3},
        headers={"authorization": f"bearer {KEY}"},
    )
    assert response.status_code == 200, response.text


async def test_open_routes_stay_open(client):
    for path in ("/health", "/ready", "/metrics", "/docs/openapi.json", "/"):
        assert (await client.get(path)).status_code == 200, path


async def test_docs_can_be_protected(settings: Settings):
    async with AsyncTestClient(app=create_app(keyed(settings, protect_docs=True))) as client:
        assert_error(await client.get("/docs/openapi.json"), 401, "unauthorized")
        response = await client.get(
            "/docs/openapi.json", headers={"authorization": f"Bearer {KEY}"}
        )
        assert response.status_code == 200


async def test_no_keys_means_open(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/v1/models")).status_code == 200


async def test_key_file(settings: Settings, tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text(f"# comment\n\n{KEY}\n")
    app = create_app(msgspec.structs.replace(settings, api_key_file=str(keys)))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/v1/models")).status_code == 401
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 200


def test_unreadable_key_file_is_a_settings_error(settings: Settings, tmp_path: Path):
    with pytest.raises(SettingsError, match="TINYGPT_API_KEY_FILE"):
        create_app(msgspec.structs.replace(settings, api_key_file=str(tmp_path / "none")))


def test_key_matches():
    assert key_matches("a", ["b", "a"]) and not key_matches("a", ["ab"])
    assert not key_matches(None, ["a"]) and not key_matches("a", [])
