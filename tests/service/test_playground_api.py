"""The playground in-process: its page and static files, the bigram table, the PCA projection."""

import math
import re

import pytest
import torch
from litestar.testing import AsyncTestClient

import service.projections
from models.checkpoint import load_checkpoint
from service.app import create_app
from service.controllers.playground import STATIC_DIR
from service.settings import Settings
from tests.service.test_app import assert_error
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def get_ok(client, path: str) -> dict:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


# -- the page -----------------------------------------------------------------------------


async def test_the_page_is_served_at_the_root_with_a_same_origin_policy(client):
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js">' in response.text


async def test_every_file_the_page_names_is_served_from_this_server(client):
    page = (await client.get("/")).text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page)
    # Its own files, the API docs, an in-page anchor, the empty data: favicon; no other host.
    assert urls and all(url.startswith(("/static/", "/docs", "#", "data:")) for url in urls), urls
    for url in (u for u in urls if u.startswith("/")):
        assert (await client.get(url)).status_code == 200, url
    modules = sorted(path.name for path in STATIC_DIR.glob("*.js"))
    for name in modules:
        response = await client.get(f"/static/{name}")
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
        # Imports stay relative to /static: no module comes from anywhere else.
        imports = re.findall(r'from\s+"([^"]+)"', response.text)
        assert all(i.startswith("./") for i in imports), (name, imports)


async def test_the_page_and_its_files_are_not_api_operations(client):
    schema = (await client.get("/docs/openapi.json")).json()
    assert "/" not in schema["paths"]
    assert not any(path.startswith("/static") for path in schema["paths"])


async def test_openapi_documents_the_playground_operations(client):
    schema = (await client.get("/docs/openapi.json")).json()
    operations = {
        op["operationId"]: op for path in schema["paths"].values() for op in path.values()
    }
    for name in ("bigramTable", "tokenEmbeddings"):
        assert operations[name].get("description"), name
        assert "404" in operations[name]["responses"]
    assert "400" in operations["bigramTable"]["responses"]
    assert {"BigramTable", "EmbeddingProjection"} <= set(schema["components"]["schemas"])


# -- the bigram table ---------------------------------------------------------------------


async def test_bigram_table_rows_are_the_next_token_distributions(client):
    table = await get_ok(client, f"/v1/models/{BIGRAM_ID}/bigram-table")
    assert set(table) == {"model", "tokens", "probs", "empirical"}
    tokens, probs, empirical = table["tokens"], table["probs"], table["empirical"]
    vocab = len(tokens)
    assert table["model"] == BIGRAM_ID and vocab > 10
    assert len(probs) == vocab and all(len(row) == vocab for row in probs)
    assert len(empirical) == vocab and all(len(row) == vocab for row in empirical)
    for row in (*probs, *empirical):
        assert math.isclose(sum(row), 1.0, abs_tol=1e-5) and min(row) > 0
    for i in (0, vocab // 2, vocab - 1):
        body = {"model": BIGRAM_ID, "context": tokens[i]}
        response = await client.post("/v1/next-token", json=body)
        for entry in response.json()["distribution"]:
            assert tokens[entry["id"]] == entry["token"]
            assert probs[i][entry["id"]] == pytest.approx(entry["prob"], rel=1e-12)
            assert empirical[i][entry["id"]] == pytest.approx(entry["empirical_prob"], rel=1e-6)


async def test_bigram_table_of_a_gpt_is_a_400_naming_the_bigram_models(client):
    response = await client.get(f"/v1/models/{GPT_ID}/bigram-table")
    message = assert_error(response, 400, "invalid_request", "model_id")
    assert "only bigram models" in message and BIGRAM_ID in message


@pytest.mark.parametrize("picture", ["bigram-table", "embeddings"])
async def test_an_unknown_model_is_a_404_naming_the_loaded_ones(client, picture):
    response = await client.get(f"/v1/models/nope/{picture}")
    message = assert_error(response, 404, "not_found", "model_id")
    assert "'nope'" in message and BIGRAM_ID in message and GPT_ID in message


# -- the embedding projection -------------------------------------------------------------


@pytest.mark.parametrize("model_id", [BIGRAM_ID, GPT_ID])
async def test_embeddings_are_the_two_principal_components(client, checkpoint_folder, model_id):
    body = await get_ok(client, f"/v1/models/{model_id}/embeddings")
    assert body["model"] == model_id and body["method"] == "pca"
    checkpoint = load_checkpoint(checkpoint_folder / model_id, "cpu")
    vectors = checkpoint.model.token_vectors().detach().double()
    vocab = checkpoint.tokenizer.vocab_size
    points = body["points"]
    assert [p["id"] for p in points] == list(range(vocab))
    assert [p["token"] for p in points] == [
        checkpoint.tokenizer.token_text(i) for i in range(vocab)
    ]
    xy = torch.tensor([[p["x"], p["y"]] for p in points], dtype=torch.float64)
    # Centred, uncorrelated, the first axis the wider, and each axis' variance share is the
    # largest the data allow: the top eigenvalues of the covariance matrix.
    assert torch.allclose(xy.mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    centred = vectors - vectors.mean(dim=0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    total = eigenvalues.sum()
    spread = (xy**2).sum(dim=0)
    assert torch.allclose(spread, eigenvalues[:2], rtol=1e-6)
    assert abs(float(xy[:, 0] @ xy[:, 1])) < 1e-6 * float(total)
    share = body["explained_variance"]
    assert share == pytest.approx((eigenvalues[:2] / total).tolist(), rel=1e-6)
    assert 1 >= share[0] >= share[1] > 0


async def test_embeddings_are_computed_once_per_model(client, monkeypatch):
    calls = []
    real = service.projections.embedding_projection

    def counted(model):
        calls.append(model.id)
        return real(model)

    monkeypatch.setattr(service.projections, "embedding_projection", counted)
    first = await get_ok(client, f"/v1/models/{GPT_ID}/embeddings")
    assert await get_ok(client, f"/v1/models/{GPT_ID}/embeddings") == first
    await get_ok(client, f"/v1/models/{BIGRAM_ID}/embeddings")
    assert calls == [GPT_ID, BIGRAM_ID]


def test_principal_components_fix_each_axis_sign():
    vectors = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    coords, _ = service.projections.principal_components(vectors)
    flipped, _ = service.projections.principal_components(-vectors)
    # -vectors has the same axes up to sign; the sign rule makes them the same axes, so the
    # points come out mirrored through the origin.
    assert torch.allclose(flipped, -coords, atol=1e-9)
    again, _ = service.projections.principal_components(vectors.clone())
    assert torch.equal(again, coords)
