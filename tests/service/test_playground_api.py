"""The playground in-process: its page and static files, the bigram table, the PCA projection,
and both pictures staying bounded for vocabularies of thousands of tokens."""

import math
import re
from pathlib import Path

import pytest
import torch
from litestar.testing import AsyncTestClient

import service.projections
from models.bigram import BigramConfig, BigramLanguageModel, empirical_table
from models.checkpoint import load_checkpoint, save_checkpoint
from models.tokenizer import CharTokenizer
from service.app import create_app
from service.controllers.playground import STATIC_DIR
from service.schemas import MAX_EMBEDDING_POINTS, MAX_TABLE_SIDE
from service.settings import Settings
from tests.service.test_app import assert_error
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio

# A bigram over 4,140 CJK characters, as trained on real multilingual text: its whole table
# (17 million cells) was 389 MB of JSON. Too many tokens for the trainer to store counts.
LARGE_BIGRAM_ID = "bigram-cjk"
LARGE_VOCAB = 4140
# Past the table's side too, but with the training counts in its manifest.
COUNTED_BIGRAM_ID = "bigram-counted"
COUNTED_VOCAB = 300
MAX_BODY_BYTES = 2_000_000


def save_wide_bigram(folder: Path, vocab: int, seed: int = 0, with_counts: bool = False) -> None:
    """A bigram checkpoint over `vocab` CJK characters whose tokens differ in how likely
    they are to come next (so frequency order is not id order); `with_counts` records
    made-up training counts in the manifest, as the trainer does for small vocabularies."""
    generator = torch.Generator().manual_seed(seed)
    popularity = torch.randperm(vocab, generator=generator).double() / vocab
    # Rows alike in a few directions, as a trained table's similar tokens are, plus noise.
    shared = torch.randn(vocab, 4, generator=generator, dtype=torch.float64) * torch.tensor(
        [4.0, 3.0, 2.0, 1.0], dtype=torch.float64
    )
    directions = torch.randn(4, vocab, generator=generator, dtype=torch.float64)
    noise = torch.randn(vocab, vocab, generator=generator, dtype=torch.float64) * 0.3
    logits = shared @ directions + noise - 8 * popularity
    model = BigramLanguageModel(BigramConfig(vocab_size=vocab))
    with torch.no_grad():
        model.token_embedding_table.weight.copy_(logits)
    extra = {}
    if with_counts:
        counts = torch.randint(0, 50, (vocab, vocab), generator=generator)
        extra["bigram_counts"] = counts.tolist()
    tokenizer = CharTokenizer([chr(0x4E00 + i) for i in range(vocab)])
    save_checkpoint(folder, model, tokenizer, metrics={}, extra=extra)


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def large_vocab_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("large-vocab")
    save_wide_bigram(root / LARGE_BIGRAM_ID, LARGE_VOCAB)
    save_wide_bigram(root / COUNTED_BIGRAM_ID, COUNTED_VOCAB, seed=1, with_counts=True)
    return root


@pytest.fixture
async def large_client(large_vocab_folder: Path):
    settings = Settings(checkpoints=str(large_vocab_folder), device="cpu", compile_decode=False)
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


def weights_of(folder: Path) -> torch.Tensor:
    return load_checkpoint(folder, "cpu").model.token_vectors().detach().double()


def expected_window(weights: torch.Tensor, table: dict) -> torch.Tensor:
    """The model's softmax rows for the window's row ids, at its column ids."""
    rows, cols = torch.tensor(table["rows"]["ids"]), torch.tensor(table["cols"]["ids"])
    return torch.softmax(weights[rows], dim=-1)[:, cols]


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
        assert {"400", "404"} <= set(operations[name]["responses"]), name
    assert {"BigramTable", "EmbeddingProjection"} <= set(schema["components"]["schemas"])

    def query(name: str) -> dict[str, dict]:
        params = operations[name]["parameters"]
        found = {p["name"]: p for p in params if p["in"] == "query"}
        assert all(p.get("description") for p in found.values()), name
        return {key: p["schema"] for key, p in found.items()}

    table = query("bigramTable")
    assert set(table) == {"order", "row_start", "col_start", "rows", "cols", "focus"}
    for side in ("rows", "cols"):
        assert (table[side]["minimum"], table[side]["maximum"]) == (1, MAX_TABLE_SIDE)
    for position in ("row_start", "col_start", "focus"):
        assert table[position]["minimum"] == 0, position
    embeddings = query("tokenEmbeddings")
    assert set(embeddings) == {"offset", "limit"}
    assert (embeddings["limit"]["minimum"], embeddings["limit"]["maximum"]) == (
        1,
        MAX_EMBEDDING_POINTS,
    )
    assert embeddings["offset"]["minimum"] == 0


# -- the bigram table ---------------------------------------------------------------------


async def test_bigram_table_rows_are_the_next_token_distributions(client):
    table = await get_ok(client, f"/v1/models/{BIGRAM_ID}/bigram-table")
    keys = {"model", "vocab_size", "order", "ranked_by", "rows", "cols", "probs", "empirical"}
    assert set(table) == keys
    # A small vocabulary fits whole: one window, in token id order, rows and columns alike.
    vocab = table["vocab_size"]
    assert table["model"] == BIGRAM_ID and 10 < vocab <= MAX_TABLE_SIDE
    assert (table["order"], table["ranked_by"]) == ("id", "token_id")
    assert table["rows"] == table["cols"]
    assert table["rows"]["start"] == 0 and table["rows"]["next"] is None
    assert table["rows"]["ids"] == list(range(vocab))
    tokens, probs, empirical = table["rows"]["tokens"], table["probs"], table["empirical"]
    assert len(tokens) == vocab
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


async def test_a_small_bigram_in_frequency_order_follows_its_training_counts(
    client, checkpoint_folder
):
    table = await get_ok(client, f"/v1/models/{BIGRAM_ID}/bigram-table?order=frequency")
    assert (table["order"], table["ranked_by"]) == ("frequency", "training_counts")
    counts = torch.tensor(load_checkpoint(checkpoint_folder / BIGRAM_ID).manifest["bigram_counts"])
    ids = table["rows"]["ids"]
    assert sorted(ids) == list(range(table["vocab_size"])) and ids == table["cols"]["ids"]
    occurrences = counts.sum(dim=1)[ids].tolist()
    assert occurrences == sorted(occurrences, reverse=True)
    whole = await get_ok(client, f"/v1/models/{BIGRAM_ID}/bigram-table")
    for r, i in enumerate(ids[:5]):
        for c, j in enumerate(ids[:5]):
            assert table["probs"][r][c] == whole["probs"][i][j]
            assert table["empirical"][r][c] == whole["empirical"][i][j]


# -- a bigram of 4,140 tokens -------------------------------------------------------------


def stationary(weights: torch.Tensor) -> torch.Tensor:
    table = torch.softmax(weights, dim=-1)
    pi = torch.full((len(table),), 1 / len(table), dtype=torch.float64)
    for _ in range(200):
        pi = pi @ table
    assert float((pi @ table - pi).abs().sum()) < 1e-12  # it is the stationary distribution
    return pi


async def test_a_large_bigram_table_is_a_bounded_window_of_its_most_frequent_tokens(
    large_client, large_vocab_folder
):
    response = await large_client.get(f"/v1/models/{LARGE_BIGRAM_ID}/bigram-table")
    assert response.status_code == 200, response.text
    assert len(response.content) < MAX_BODY_BYTES
    table = response.json()
    assert table["vocab_size"] == LARGE_VOCAB and table["empirical"] is None
    assert (table["order"], table["ranked_by"]) == ("frequency", "stationary_probability")
    side = MAX_TABLE_SIDE
    for axis in (table["rows"], table["cols"]):
        assert axis["start"] == 0 and axis["next"] == side and len(axis["ids"]) == side
        assert axis["tokens"] == [chr(0x4E00 + i) for i in axis["ids"]]
    weights = weights_of(large_vocab_folder / LARGE_BIGRAM_ID)
    probs = torch.tensor(table["probs"], dtype=torch.float64)
    assert probs.shape == (side, side)
    assert torch.allclose(probs, expected_window(weights, table), rtol=1e-12, atol=0)

    # The rows are the most likely tokens of the model's own chain, most likely first.
    pi = stationary(weights)
    top = pi[table["rows"]["ids"]]
    assert bool((top[1:] <= top[:-1] * (1 + 1e-5)).all())
    rest = torch.ones(LARGE_VOCAB, dtype=torch.bool)
    rest[table["rows"]["ids"]] = False
    assert float(top.min()) >= float(pi[rest].max()) * (1 - 1e-5)
    assert table["rows"]["ids"] != sorted(table["rows"]["ids"])  # not id order

    # Paging by `next` visits every token once, in that order.
    ranked, start = [], 0
    while start is not None:
        path = f"/v1/models/{LARGE_BIGRAM_ID}/bigram-table?row_start={start}&cols=1"
        page = await get_ok(large_client, path)
        assert page["rows"]["start"] == start and len(page["probs"][0]) == 1
        ranked += page["rows"]["ids"]
        start = page["rows"]["next"]
    assert sorted(ranked) == list(range(LARGE_VOCAB)) and ranked[:side] == table["rows"]["ids"]


async def test_a_large_bigram_table_window_selects_rows_and_columns(
    large_client, large_vocab_folder
):
    path = f"/v1/models/{LARGE_BIGRAM_ID}/bigram-table"
    window = "?order=id&row_start=4100&rows=64&col_start=10&cols=32"
    table = await get_ok(large_client, path + window)
    assert (table["order"], table["ranked_by"]) == ("id", "token_id")
    assert table["rows"]["ids"] == list(range(4100, LARGE_VOCAB))  # fewer at the end
    assert table["rows"]["start"] == 4100 and table["rows"]["next"] is None
    assert table["cols"]["ids"] == list(range(10, 42)) and table["cols"]["next"] == 42
    weights = weights_of(large_vocab_folder / LARGE_BIGRAM_ID)
    probs = torch.tensor(table["probs"], dtype=torch.float64)
    assert probs.shape == (40, 32)
    assert torch.allclose(probs, expected_window(weights, table), rtol=1e-12, atol=0)

    # `focus`: the window of each side's grid that holds the token, whatever its rank.
    ranked = (await get_ok(large_client, path + "?rows=256&cols=1&row_start=256"))["rows"]["ids"]
    token = ranked[100]  # rank 356
    table = await get_ok(large_client, path + f"?focus={token}&rows=64&cols=128")
    assert table["rows"]["start"] == 320 and table["cols"]["start"] == 256
    assert table["rows"]["ids"].index(token) == 36 and table["cols"]["ids"].index(token) == 100
    probs = torch.tensor(table["probs"], dtype=torch.float64)
    assert torch.allclose(probs, expected_window(weights, table), rtol=1e-12, atol=0)


async def test_a_table_past_the_side_with_counts_ranks_by_them_and_slices_the_empirical(
    large_client, large_vocab_folder
):
    table = await get_ok(large_client, f"/v1/models/{COUNTED_BIGRAM_ID}/bigram-table?cols=64")
    assert (table["order"], table["ranked_by"]) == ("frequency", "training_counts")
    assert len(table["rows"]["ids"]) == MAX_TABLE_SIDE and table["rows"]["next"] == MAX_TABLE_SIDE
    assert len(table["cols"]["ids"]) == 64 and table["cols"]["next"] == 64
    checkpoint = load_checkpoint(large_vocab_folder / COUNTED_BIGRAM_ID)
    counts = torch.tensor(checkpoint.manifest["bigram_counts"])
    occurrences = counts.sum(dim=1)
    ranked = torch.sort(occurrences, descending=True, stable=True).indices.tolist()
    assert table["rows"]["ids"] == ranked[:MAX_TABLE_SIDE] and table["cols"]["ids"] == ranked[:64]
    rows, cols = torch.tensor(table["rows"]["ids"]), torch.tensor(table["cols"]["ids"])
    expected = empirical_table(counts)[rows][:, cols].double()
    assert torch.equal(torch.tensor(table["empirical"], dtype=torch.float64), expected)
    probs = torch.tensor(table["probs"], dtype=torch.float64)
    weights = checkpoint.model.token_vectors().detach().double()
    assert torch.allclose(probs, expected_window(weights, table), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("picture", "query", "param", "words"),
    [
        ("bigram-table", "row_start=4140", "row_start", ["4140 tokens", "0 to 4139", "below"]),
        ("bigram-table", "order=id&col_start=99999", "col_start", ["99999", "4140 tokens"]),
        ("bigram-table", "focus=4140", "focus", ["4140", "ids 0 to 4139"]),
        ("bigram-table", "focus=3&row_start=0", "focus", ["not both"]),
        ("bigram-table", "rows=257", "rows", ["256"]),
        ("bigram-table", "cols=0", "cols", ["1"]),
        ("bigram-table", "order=popular", "order", ["popular"]),
        ("bigram-table", "row_start=-1", "row_start", ["0"]),
        ("embeddings", "offset=4140", "offset", ["4140 tokens", "ids 0 to 4139"]),
        ("embeddings", "limit=0", "limit", ["1"]),
        ("embeddings", f"limit={MAX_EMBEDDING_POINTS + 1}", "limit", [str(MAX_EMBEDDING_POINTS)]),
    ],
)
async def test_a_window_outside_the_vocabulary_or_the_bounds_is_a_400_saying_why(
    large_client, picture, query, param, words
):
    response = await large_client.get(f"/v1/models/{LARGE_BIGRAM_ID}/{picture}?{query}")
    message = assert_error(response, 400, "invalid_request", param)
    assert all(word in message for word in words), message


@pytest.mark.parametrize("picture", ["bigram-table", "embeddings"])
async def test_an_unknown_model_is_a_404_naming_the_loaded_ones(client, picture):
    response = await client.get(f"/v1/models/nope/{picture}")
    message = assert_error(response, 404, "not_found", "model_id")
    assert "'nope'" in message and BIGRAM_ID in message and GPT_ID in message


# -- the embedding projection -------------------------------------------------------------


def top_eigenvalues(centred: torch.Tensor) -> torch.Tensor:
    """The two largest eigenvalues of the covariance matrix (times N): exactly for a few
    hundred dimensions; past that, by torch's own randomized SVD, iterated to convergence."""
    if min(centred.shape) <= 1024:
        return torch.linalg.eigvalsh(centred.T @ centred).flip(0)[:2]
    _, singular, _ = torch.svd_lowrank(centred, q=12, niter=40)
    return singular[:2].square()


def check_principal_components(points: list[dict], vectors: torch.Tensor, share: list[float]):
    """`points` (one per row of `vectors`) are the rows on their two principal axes."""
    xy = torch.tensor([[p["x"], p["y"]] for p in points], dtype=torch.float64)
    # Centred, uncorrelated, the first axis the wider, and each axis' variance share is the
    # largest the data allow: the top eigenvalues of the covariance matrix.
    assert torch.allclose(xy.mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    centred = vectors - vectors.mean(dim=0)
    eigenvalues = top_eigenvalues(centred)
    total = centred.square().sum()
    spread = (xy**2).sum(dim=0)
    assert torch.allclose(spread, eigenvalues, rtol=1e-6)
    assert abs(float(xy[:, 0] @ xy[:, 1])) < 1e-6 * float(total)
    assert share == pytest.approx((eigenvalues / total).tolist(), rel=1e-6)
    assert 1 >= share[0] >= share[1] > 0


@pytest.mark.parametrize("model_id", [BIGRAM_ID, GPT_ID])
async def test_embeddings_are_the_two_principal_components(client, checkpoint_folder, model_id):
    body = await get_ok(client, f"/v1/models/{model_id}/embeddings")
    assert body["model"] == model_id and body["method"] == "pca"
    checkpoint = load_checkpoint(checkpoint_folder / model_id, "cpu")
    vectors = checkpoint.model.token_vectors().detach().double()
    vocab = checkpoint.tokenizer.vocab_size
    # A small vocabulary fits one page.
    assert (body["total"], body["offset"], body["next_offset"]) == (vocab, 0, None)
    points = body["points"]
    assert [p["id"] for p in points] == list(range(vocab))
    assert [p["token"] for p in points] == [
        checkpoint.tokenizer.token_text(i) for i in range(vocab)
    ]
    check_principal_components(points, vectors, body["explained_variance"])


async def test_large_vocabulary_embeddings_come_in_bounded_pages_of_one_fit(
    large_client, large_vocab_folder
):
    path = f"/v1/models/{LARGE_BIGRAM_ID}/embeddings"
    response = await large_client.get(path)
    assert response.status_code == 200 and len(response.content) < MAX_BODY_BYTES
    first = response.json()
    assert (first["total"], first["offset"], first["next_offset"]) == (LARGE_VOCAB, 0, 2048)
    assert [p["id"] for p in first["points"]] == list(range(2048))
    rest = await get_ok(large_client, f"{path}?offset=2048&limit={MAX_EMBEDDING_POINTS}")
    assert (rest["offset"], rest["next_offset"]) == (2048, None)
    assert [p["id"] for p in rest["points"]] == list(range(2048, LARGE_VOCAB))
    assert rest["explained_variance"] == first["explained_variance"]
    # The pages are parts of one fit on all 4,140 vectors: together they are its PCA.
    vectors = weights_of(large_vocab_folder / LARGE_BIGRAM_ID)
    points = first["points"] + rest["points"]
    check_principal_components(points, vectors, first["explained_variance"])
    middle = await get_ok(large_client, f"{path}?offset=1000&limit=10")
    assert middle["points"] == points[1000:1010] and middle["next_offset"] == 1010


async def test_embeddings_are_computed_once_per_model(client, monkeypatch):
    fitted = []  # the vectors each PCA was fitted on
    real = service.projections.principal_components

    def counted(vectors, count=2):
        fitted.append(tuple(vectors.shape))
        return real(vectors, count)

    monkeypatch.setattr(service.projections, "principal_components", counted)
    first = await get_ok(client, f"/v1/models/{GPT_ID}/embeddings")
    assert await get_ok(client, f"/v1/models/{GPT_ID}/embeddings") == first
    await get_ok(client, f"/v1/models/{BIGRAM_ID}/embeddings")
    gpt, bigram = (
        client.app.state.registry.get(m).model.token_vectors() for m in (GPT_ID, BIGRAM_ID)
    )
    assert fitted == [tuple(gpt.shape), tuple(bigram.shape)]


def test_principal_components_fix_each_axis_sign():
    vectors = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    coords, _ = service.projections.principal_components(vectors)
    flipped, _ = service.projections.principal_components(-vectors)
    # -vectors has the same axes up to sign; the sign rule makes them the same axes, so the
    # points come out mirrored through the origin.
    assert torch.allclose(flipped, -coords, atol=1e-9)
    again, _ = service.projections.principal_components(vectors.clone())
    assert torch.equal(again, coords)


def test_subspace_iteration_finds_the_exact_principal_axes(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    # 700 x 600 vectors whose spectrum falls off, as a trained table's does.
    scales = torch.logspace(1, -3, 600, dtype=torch.float64)
    vectors = torch.randn(700, 600, generator=generator, dtype=torch.float64) * scales
    exact, exact_share = service.projections.principal_components(vectors)
    monkeypatch.setattr(service.projections, "EXACT_PCA_MAX_SIDE", 100)
    fast, fast_share = service.projections.principal_components(vectors)
    assert torch.allclose(fast, exact, rtol=1e-8, atol=1e-8)
    assert fast_share == pytest.approx(exact_share, rel=1e-10)
