"""GET /v1/models/{id}/timeline and /timeline/table in-process, on the tiny trained models
(whose trainer recorded their timelines) and on hand-made checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from litestar.testing import AsyncTestClient

from models.bigram import BigramConfig, BigramLanguageModel
from models.checkpoint import save_checkpoint
from models.data import TrainingData
from models.timeline import MAX_TOKENS, TIMELINE_FILE, Timeline, save_timeline
from models.tokenizer import CharTokenizer
from service.app import create_app
from service.projections import principal_components
from service.settings import Settings
from service.timeline import aligned_projections
from tests.service.test_app import assert_error
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio

WIDE_BIGRAM_ID = "bigram-wide"
WIDE_VOCAB = 300


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def timeline(client, model_id: str, **params) -> dict:
    response = await client.get(f"/v1/models/{model_id}/timeline", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def table_at(client, model_id: str, step: int) -> dict:
    response = await client.get(f"/v1/models/{model_id}/timeline/table", params={"step": step})
    assert response.status_code == 200, response.text
    return response.json()


# -- the bigram: from uniform to the served table ------------------------------------------


async def test_a_zeros_bigram_starts_uniform_and_ends_at_the_served_table(client):
    body = await timeline(client, BIGRAM_ID)
    steps = [s["step"] for s in body["steps"]]
    assert steps == [0, 10, 20, 30] and body["kind"] == "bigram"
    vocab = body["vocab_size"]
    assert body["ids"] == list(range(vocab))  # a small vocabulary: every token
    first = await table_at(client, BIGRAM_ID, 0)
    cells = {p for row in first["probs"] for p in row}
    assert len(cells) == 1 and cells.pop() == pytest.approx(1 / vocab, rel=1e-7)
    assert body["steps"][0]["kl"] > body["steps"][-1]["kl"] > 0
    assert body["steps"][0]["tv_weighted"] > body["steps"][-1]["tv_weighted"]

    # The served weights are the best step's, which for this run is the last.
    assert body["checkpoint_step"] == steps[-1]
    last = await table_at(client, BIGRAM_ID, steps[-1])
    served = (await client.get(f"/v1/models/{BIGRAM_ID}/bigram-table")).json()
    assert served["rows"]["ids"] == last["ids"] == served["cols"]["ids"]
    assert torch.allclose(
        torch.tensor(last["probs"], dtype=torch.float64),
        torch.tensor(served["probs"], dtype=torch.float64),
        rtol=1e-6,
        atol=0,
    )
    assert last["empirical"] == served["empirical"]


async def test_the_map_of_a_zeros_bigram_starts_as_one_point(client):
    frames = (await timeline(client, BIGRAM_ID))["frames"]
    assert set(frames[0]["x"]) == set(frames[0]["y"]) == {0.0}  # every row the same
    assert len(set(frames[-1]["x"])) > 10


# -- the map and the neighbours ------------------------------------------------------------


async def test_the_projection_is_the_same_for_the_same_request(settings):
    responses = []
    for _ in range(2):  # a fresh app each time: nothing cached from the first
        async with AsyncTestClient(app=create_app(settings)) as client:
            for _ in range(2):
                responses.append(await timeline(client, GPT_ID, tokens="e,a"))
    assert all(r == responses[0] for r in responses[1:])
    frames = responses[0]["frames"]
    assert len(frames) == len(responses[0]["steps"]) == 4
    assert all(len(f["x"]) == len(f["y"]) == len(responses[0]["ids"]) for f in frames)


def test_procrustes_undoes_a_rotation_and_the_last_frame_is_its_own_pca():
    """A snapshot that is the next one turned in its own space (and mirrored) lands on it."""
    generator = torch.Generator().manual_seed(0)
    final = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    turn, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    mirrored = torch.diag(torch.tensor([-1.0] + [1.0] * 7, dtype=torch.float64))
    earlier = final @ turn @ mirrored
    (first, _), (last, explained) = aligned_projections([earlier, final])
    assert torch.allclose(first, last, atol=1e-9)
    own, own_explained = principal_components(final)
    assert torch.equal(last, own) and explained == own_explained


async def test_neighbours_at_the_last_step_are_those_of_v1_neighbours(client):
    """The last step is the served weights here: the timeline ranks as /v1/neighbours does
    by default (GPT by cosine, bigram by Jensen-Shannon distance)."""
    for model_id in (GPT_ID, BIGRAM_ID):
        body = await timeline(client, model_id, tokens="e,a", k=5)
        assert body["checkpoint_step"] == body["steps"][-1]["step"]
        for query in body["neighbours"]:
            assert len(query["steps"]) == len(body["steps"])
            assert all(len(at_step) == 5 for at_step in query["steps"])
            served = await client.post(
                "/v1/neighbours", json={"model": model_id, "token": query["token"], "k": 5}
            )
            expected = served.json()["neighbours"]
            last = query["steps"][-1]
            assert [n["id"] for n in last] == [n["id"] for n in expected], model_id
            assert [n["score"] for n in last] == pytest.approx(
                [n["score"] for n in expected], abs=1e-5
            )


async def test_a_space_is_a_token_to_ask_about(client):
    body = await timeline(client, GPT_ID, tokens=" ")
    assert [q["token"] for q in body["neighbours"]] == [" "]


# -- what cannot be answered ----------------------------------------------------------------


async def test_tokens_the_model_does_not_have_are_named(client):
    response = await client.get(f"/v1/models/{GPT_ID}/timeline", params={"tokens": "e,xyz,€"})
    message = assert_error(response, 400, "invalid_request", "tokens")
    assert "'xyz'" in message and "'€'" in message and "'e'" not in message


async def test_too_many_or_empty_tokens_are_refused(client):
    message = assert_error(
        await client.get(f"/v1/models/{GPT_ID}/timeline", params={"tokens": ",".join("abcdefghi")}),
        400,
        "invalid_request",
        "tokens",
    )
    assert "9 tokens; ask about at most 8" in message
    message = assert_error(
        await client.get(f"/v1/models/{GPT_ID}/timeline", params={"tokens": "a,,e"}),
        400,
        "invalid_request",
        "tokens",
    )
    assert "empty entry" in message


async def test_a_step_not_recorded_and_a_gpt_table_are_refused(client):
    response = await client.get(f"/v1/models/{BIGRAM_ID}/timeline/table", params={"step": 5})
    message = assert_error(response, 400, "invalid_request", "step")
    assert "its steps are 0, 10, 20, 30" in message
    response = await client.get(f"/v1/models/{GPT_ID}/timeline/table", params={"step": 0})
    assert "is a gpt model" in assert_error(response, 400, "invalid_request", "model_id")


async def test_a_model_without_a_timeline_is_a_404_saying_how_to_get_one(
    checkpoint_folder: Path, tmp_path: Path
):
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint_folder / GPT_ID, root / "old-gpt")
    (root / "old-gpt" / TIMELINE_FILE).unlink()
    shutil.copytree(checkpoint_folder / GPT_ID, root / "broken-timeline")
    (root / "broken-timeline" / TIMELINE_FILE).write_bytes(b"not a timeline")
    settings = Settings(checkpoints=str(root), device="cpu")
    async with AsyncTestClient(app=create_app(settings)) as client:
        response = await client.get("/v1/models/old-gpt/timeline")
        message = assert_error(response, 404, "not_found", "model_id")
        assert f"holds no {TIMELINE_FILE}" in message and "retrain the model" in message
        response = await client.get("/v1/models/broken-timeline/timeline")
        message = assert_error(response, 404, "not_found", "model_id")
        assert "cannot be used" in message and "not a training timeline" in message
        response = await client.get("/v1/models/nope/timeline")
        assert "is not loaded" in assert_error(response, 404, "not_found", "model_id")


# -- a vocabulary larger than a snapshot ------------------------------------------------------


@pytest.fixture(scope="module")
def wide_bigram_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bigram over 300 characters, its timeline recorded by models.timeline from made-up
    training ids in which token i occurs about i times, so the most frequent are the last."""
    root = tmp_path_factory.mktemp("wide-timeline")
    folder = root / WIDE_BIGRAM_ID
    model = BigramLanguageModel(BigramConfig(vocab_size=WIDE_VOCAB))
    model.init_weights()
    ids = torch.repeat_interleave(torch.arange(WIDE_VOCAB), torch.arange(WIDE_VOCAB) + 1)
    ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
    data = TrainingData(train=ids, val=ids[:100])
    recorded = Timeline("bigram", WIDE_VOCAB, eval_interval=10)
    for step in (0, 10):
        recorded.record(model, data, {"step": step, "train_loss": 5.0, "val_loss": 5.0}, step)
        with torch.no_grad():
            model.token_embedding_table.weight.normal_(generator=torch.Generator().manual_seed(1))
    tokenizer = CharTokenizer([chr(0x4E00 + i) for i in range(WIDE_VOCAB)])
    save_checkpoint(folder, model, tokenizer, metrics={"step": 10})
    save_timeline(folder, recorded)
    return root


async def test_a_large_vocabulary_shows_its_most_frequent_tokens(wide_bigram_folder: Path):
    settings = Settings(checkpoints=str(wide_bigram_folder), device="cpu")
    async with AsyncTestClient(app=create_app(settings)) as client:
        common, rare = chr(0x4E00 + WIDE_VOCAB - 1), chr(0x4E00)
        body = await timeline(client, WIDE_BIGRAM_ID, tokens=common)
        assert len(body["ids"]) == MAX_TOKENS and body["ids"][0] == WIDE_VOCAB - 1
        assert all(len(f["x"]) == MAX_TOKENS for f in body["frames"])
        table = await table_at(client, WIDE_BIGRAM_ID, 10)
        assert len(table["probs"]) == len(table["probs"][0]) == MAX_TOKENS
        assert table["empirical"] is None  # no counts in this manifest
        response = await client.get(
            f"/v1/models/{WIDE_BIGRAM_ID}/timeline", params={"tokens": rare}
        )
        message = assert_error(response, 400, "invalid_request", "tokens")
        assert f"did not record (it records the {MAX_TOKENS} most frequent" in message
        assert rare in message
