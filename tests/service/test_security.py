"""API keys: /v1/* needs a Bearer key when keys are configured (a guard on the /v1 router);
the open routes stay open."""

from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.security import api_key_guards, forwarded_client, key_matches, trusted_networks
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
    assert response.headers["www-authenticate"] == "Bearer"
    assert "refused GET /v1/models: an unknown API key" in caplog.text
    assert "refused POST /v1/generate: no API key" in caplog.text
    assert "wrong" not in caplog.text and KEY not in caplog.text and OTHER not in caplog.text


async def test_completions_401_is_in_openais_envelope(client, caplog):
    """The guard runs inside the route, so the OpenAI controller's handlers shape its 401."""
    for headers in ({}, {"authorization": "Bearer wrong"}):
        response = await client.post(
            "/v1/completions", json={"model": GPT_ID, "prompt": "a"}, headers=headers
        )
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert set(response.json()) == {"error"}
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "authentication_error" and error["param"] is None
        assert "Authorization: Bearer" in error["message"]
    assert "wrong" not in caplog.text and KEY not in caplog.text


def guarded_routes(app: Litestar) -> dict[str, bool]:
    """Each route path: whether its handlers (OPTIONS aside) run a guard; all or none."""
    guarded: dict[str, bool] = {}
    for route in app.routes:
        handlers = getattr(route, "route_handlers", None) or [route.route_handler]
        flags = {
            bool(handler.resolve_guards())
            for handler in handlers
            if set(getattr(handler, "http_methods", ())) != {"OPTIONS"}
        }
        assert len(flags) == 1, route.path
        guarded[route.path] = flags.pop()
    return guarded


def test_every_v1_route_and_only_those_is_guarded(settings: Settings):
    """A /v1 controller registered outside the guarded router would be open: none is."""
    routes = guarded_routes(create_app(keyed(settings)))
    assert routes and all(
        guarded == (path.startswith("/v1/") or path.startswith("/admin/"))
        for path, guarded in routes.items()
    ), routes
    routes = guarded_routes(create_app(keyed(settings, protect_docs=True)))
    docs = {path: guarded for path, guarded in routes.items() if path.startswith("/docs")}
    assert docs and all(docs.values()), docs
    routes = guarded_routes(create_app(settings))  # no API keys: only the admin guard
    assert {path for path, guarded in routes.items() if guarded} == {"/admin/reload"}


def test_the_guard_does_not_show_the_keys(settings: Settings):
    assert KEY not in repr(api_key_guards(keyed(settings)))
    assert api_key_guards(settings) == []


async def test_options_pass_without_a_key(settings: Settings):
    """A CORS preflight is answered by the CORS middleware, before any guard; a plain OPTIONS
    gets Litestar's `Allow` answer, as it did before keys were checked by a guard."""
    app = create_app(keyed(settings, cors_origins="https://example.org"))
    async with AsyncTestClient(app=app) as client:
        for path in ("/v1/generate", "/v1/completions", "/v1/models"):
            response = await client.options(
                path,
                headers={
                    "origin": "https://example.org",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization, content-type",
                },
            )
            assert response.status_code == 204, (path, response.text)
            assert response.headers["access-control-allow-origin"] == "https://example.org"
            assert "authorization" in response.headers["access-control-allow-headers"].lower()
            response = await client.options(path)
            assert response.status_code == 204, (path, response.text)
            assert "allow" in response.headers
        # the request the preflight was for still needs its key, with the CORS headers
        response = await client.post(
            "/v1/generate",
            json={"model": GPT_ID, "prompt": "a"},
            headers={"origin": "https://example.org"},
        )
        assert_error(response, 401, "unauthorized")
        assert response.headers["access-control-allow-origin"] == "https://example.org"


async def test_an_unknown_v1_path_is_404_with_or_without_a_key(client):
    """Guards run in a route: a path no route matches is a 404, not a 401."""
    assert (await client.get("/v1/nothing")).status_code == 404
    response = await client.get("/v1/nothing", headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 404


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
    for path in ("/health", "/ready", "/metrics", "/docs", "/docs/openapi.json", "/"):
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/static/app.js")).status_code == 200


async def test_docs_can_be_protected(settings: Settings):
    async with AsyncTestClient(app=create_app(keyed(settings, protect_docs=True))) as client:
        for path in ("/docs", "/docs/openapi.json", "/docs/swagger", "/docs/nothing"):
            response = await client.get(path)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        for path in ("/docs", "/docs/openapi.json", "/docs/swagger"):
            response = await client.get(path, headers={"authorization": f"Bearer {KEY}"})
            assert response.status_code == 200, path
        for path in ("/health", "/"):  # the other open routes stay open
            assert (await client.get(path)).status_code == 200, path


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


# -- who a client is ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.9", ["10.0.0.1"], "203.0.113.9"),  # not a proxy: the header is ignored
        ("10.0.0.2", ["198.51.100.7"], "198.51.100.7"),  # a trusted proxy names the client
        # the client forged a first hop; the proxy appended the real one, which is believed
        ("10.0.0.2", ["1.2.3.4, 198.51.100.7"], "198.51.100.7"),
        ("10.0.0.2", ["1.2.3.4", "198.51.100.7"], "198.51.100.7"),  # two headers: one list
        ("10.0.0.2", ["198.51.100.7, 10.0.0.3"], "198.51.100.7"),  # past two trusted hops
        ("10.0.0.2", ["10.0.0.3"], "10.0.0.3"),  # nothing but proxies: the farthest one
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", ["::ffff:198.51.100.7"], "198.51.100.7"),  # one spelling an address
        ("10.0.0.2", ["not-an-address"], "not-an-address"),
        ("::ffff:10.0.0.2", ["198.51.100.7"], "198.51.100.7"),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(peer, forwarded, client):
    trusted = trusted_networks("10.0.0.0/24, 2001:db8::1")
    assert forwarded_client(peer, forwarded, trusted) == client


def test_a_bad_trusted_proxy_is_a_settings_error(settings: Settings):
    with pytest.raises(SettingsError, match="TINYGPT_TRUSTED_PROXIES.*'10.0.0.300'"):
        create_app(msgspec.structs.replace(settings, trusted_proxies="10.0.0.1, 10.0.0.300"))


async def test_only_a_valid_key_buys_a_budget_of_its_own(settings: Settings):
    """Guessed keys count against the address that sends them, so guessing is limited too."""
    app = create_app(keyed(settings, rate_limit="2/minute", compile_decode=False))
    async with AsyncTestClient(app=app) as client:
        for guess in ("guess-1", "guess-2"):
            response = await client.get("/v1/models", headers={"authorization": f"Bearer {guess}"})
            assert response.status_code == 401
        response = await client.get("/v1/models", headers={"authorization": "Bearer guess-3"})
        assert response.status_code == 429
        response = await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 200 and response.headers["ratelimit-remaining"] == "1"
