"""The inspection endpoints in-process: next-token distributions, neighbours, tokenization."""

from __future__ import annotations

import math
from collections import Counter

import msgspec
import pytest
import torch
from litestar.testing import AsyncTestClient
from scipy.spatial import distance as scipy_distance

from models.checkpoint import load_checkpoint
from service.app import create_app
from service.registry import ModelRegistry
from service.schemas import (
    DetokenizeResponse,
    NeighboursResponse,
    NextTokenResponse,
    TokenizeResponse,
)
from service.settings import Settings
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None):
        super().__init__(message)
        self.status, self.param = status, param


@pytest.fixture
async def client(settings: Settings):
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture
def registry(client) -> ModelRegistry:
    return client.app.state.registry


async def call(client: AsyncTestClient, path: str, response_type: type, **body: object):
    """POST `body`; the response as `response_type`, or ApiError for a 4xx."""
    response = await client.post(path, json=body)
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        raise ApiError(response.status_code, error["message"], error["param"])
    assert response.status_code == 200, response.text
    return msgspec.convert(response.json(), response_type)


# -- next-token distribution ------------------------------------------------------------


async def test_bigram_distribution_is_the_softmax_of_its_table_row(client, registry):
    checkpoint = load_checkpoint(registry.settings.checkpoints + "/" + BIGRAM_ID)
    row_id = checkpoint.tokenizer.encode("e")[0]
    expected = torch.softmax(checkpoint.model.token_vectors()[row_id].detach().double(), dim=-1)
    result = await call(client, "/v1/next-token", NextTokenResponse, model=BIGRAM_ID, context="the")
    assert len(result.distribution) == checkpoint.tokenizer.vocab_size
    for entry in result.distribution:
        assert entry.prob == pytest.approx(float(expected[entry.id]), abs=1e-6)
        assert entry.logprob == pytest.approx(math.log(entry.prob), abs=1e-9)
    probs = [entry.prob for entry in result.distribution]
    assert probs == sorted(probs, reverse=True)
    assert result.entropy == pytest.approx(-float((expected * expected.log()).sum()), abs=1e-6)


async def test_bigram_entries_carry_the_smoothed_training_frequencies(
    client, registry, small_corpus
):
    # Counted here from the corpus text itself: the first 90% of its characters, as trained.
    text = small_corpus.read_text(encoding="utf-8")
    train = text[: int(0.9 * len(text))]
    following = Counter(b for a, b in zip(train, train[1:], strict=False) if a == "e")
    vocab = registry.get(BIGRAM_ID).vocab_size
    result = await call(client, "/v1/next-token", NextTokenResponse, model=BIGRAM_ID, context="e")
    for entry in result.distribution:
        smoothed = (following[entry.token] + 1) / (sum(following.values()) + vocab)
        assert entry.empirical_prob == pytest.approx(smoothed, rel=1e-5)


async def test_gpt_distribution_sums_to_one_and_reads_only_its_block(client, registry):
    long_context = "abc " * 20
    tail = long_context[-16:]
    full = await call(
        client, "/v1/next-token", NextTokenResponse, model=GPT_ID, context=long_context
    )
    assert sum(entry.prob for entry in full.distribution) == pytest.approx(1.0, abs=1e-5)
    assert all(entry.empirical_prob is None for entry in full.distribution)
    assert (
        full.distribution
        == (
            await call(client, "/v1/next-token", NextTokenResponse, model=GPT_ID, context=tail)
        ).distribution
    )


async def test_top_k_and_temperature(client, registry):
    hot = await call(
        client, "/v1/next-token", NextTokenResponse, model=GPT_ID, context="th", temperature=5.0
    )
    cold = await call(
        client,
        "/v1/next-token",
        NextTokenResponse,
        model=GPT_ID,
        context="th",
        temperature=0.2,
        top_k=3,
    )
    assert len(cold.distribution) == 3
    assert cold.distribution[0].prob > hot.distribution[0].prob
    assert cold.entropy < hot.entropy


# -- neighbours -------------------------------------------------------------------------


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
async def test_a_token_is_never_its_own_neighbour(client, registry, model, metric):
    result = await call(
        client, "/v1/neighbours", NeighboursResponse, model=model, token="e", k=100, metric=metric
    )
    tokens = [n.token for n in result.neighbours]
    assert "e" not in tokens and len(tokens) == registry.get(model).vocab_size - 1
    scores = [n.score for n in result.neighbours]
    assert scores == sorted(scores, reverse=metric != "euclidean")


async def test_cosine_scores_match_the_token_vectors(client, registry):
    vectors = registry.get(GPT_ID).model.token_vectors().detach()
    tokenizer = registry.get(GPT_ID).tokenizer
    result = await call(client, "/v1/neighbours", NeighboursResponse, model=GPT_ID, token="a", k=3)
    a = vectors[tokenizer.encode("a")[0]]
    for neighbour in result.neighbours:
        expected = torch.cosine_similarity(a, vectors[neighbour.id], dim=0)
        assert neighbour.score == pytest.approx(float(expected), abs=1e-5)


async def test_analogy_follows_gensim_and_excludes_every_query_token(client, registry):
    model = registry.get(GPT_ID)
    unit = torch.nn.functional.normalize(model.model.token_vectors().detach(), dim=1)
    a, b, c = (model.tokenizer.encode(ch)[0] for ch in "abc")
    query = torch.nn.functional.normalize((unit[b] + unit[c] - unit[a]) / 3, dim=0)
    scores = unit @ query
    scores[[a, b, c]] = -math.inf
    request = dict(model=GPT_ID, positive=["b", "c"], negative=["a"], k=5)
    result = await call(client, "/v1/neighbours", NeighboursResponse, **request)
    assert [n.id for n in result.neighbours] == scores.topk(5).indices.tolist()
    assert (result.query.positive, result.query.negative) == (["b", "c"], ["a"])


@pytest.mark.parametrize(
    ("request_fields", "param", "message"),
    [
        ({"token": "ab"}, "token", "exactly one token"),
        ({"token": ""}, "token", "exactly one token"),
        ({"token": "~"}, "token", "'~'"),
        ({"positive": ["a", "xy"]}, "positive[1]", "exactly one token"),
        ({"token": "a", "positive": ["b"]}, "token", "not both"),
        ({}, "token", "give a `token`"),
        ({"positive": ["a"], "metric": "dot"}, "metric", "cosine"),
        ({"positive": ["a"], "negative": ["a"]}, "negative", "cancel out"),
    ],
)
async def test_bad_neighbour_queries_say_what_is_wrong(
    client, registry, request_fields, param, message
):
    with pytest.raises(ApiError, match=message) as caught:
        await call(client, "/v1/neighbours", NeighboursResponse, model=GPT_ID, **request_fields)
    assert caught.value.param == param


async def neighbours(client: AsyncTestClient, **body: object) -> NeighboursResponse:
    return await call(client, "/v1/neighbours", NeighboursResponse, **body)


async def test_analogy_exclusion_is_switchable_and_said_in_the_response(client, registry):
    request = dict(model=GPT_ID, positive=["b", "c"], negative=["a"], k=100)
    excluding = await neighbours(client, **request)
    assert excluding.excluded == ["b", "c", "a"] and excluding.query.exclude_query
    everything = await neighbours(client, **request, exclude_query=False)
    assert everything.excluded == [] and not everything.query.exclude_query
    ranked = [n.token for n in everything.neighbours]
    assert {"a", "b", "c"} <= set(ranked) and len(ranked) == registry.get(GPT_ID).vocab_size
    # Leaving the query out takes those three out of the same ranking, nothing else.
    assert [n.token for n in excluding.neighbours] == [t for t in ranked if t not in "abc"]


async def test_a_single_token_may_be_its_own_nearest_neighbour_when_asked(client, registry):
    result = await neighbours(client, model=GPT_ID, token="e", exclude_query=False)
    assert result.neighbours[0].token == "e"
    assert result.neighbours[0].score == pytest.approx(1.0, abs=1e-6)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> float:
    """scipy's Jensen-Shannon distance in bits: an implementation other than ours."""
    return float(scipy_distance.jensenshannon(p.numpy(), q.numpy(), base=2))


async def test_bigram_neighbours_rank_by_jensen_shannon_by_default(client, registry):
    model = registry.get(BIGRAM_ID)
    table = torch.softmax(model.model.token_vectors().detach().double(), dim=-1)
    e = model.tokenizer.encode("e")[0]
    result = await neighbours(client, model=BIGRAM_ID, token="e")
    assert result.query.metric == "jensen_shannon" and len(result.neighbours) == 10
    expected = sorted(
        (jensen_shannon(table[e], table[i]), i) for i in range(model.vocab_size) if i != e
    )
    assert [n.id for n in result.neighbours] == [i for _, i in expected[:10]]
    for neighbour, (distance, _) in zip(result.neighbours, expected, strict=False):
        assert neighbour.score == pytest.approx(distance, abs=1e-6)
    # Cosine is still there when asked for, and analogies still rank by it.
    cosine = await neighbours(client, model=BIGRAM_ID, token="e", metric="cosine")
    unit = model.unit_vectors
    assert cosine.neighbours[0].score == pytest.approx(
        float(unit[e] @ unit[cosine.neighbours[0].id]), abs=1e-5
    )
    analogy = await neighbours(client, model=BIGRAM_ID, positive=["e"], negative=["a"])
    assert analogy.query.metric == "cosine"


async def test_jensen_shannon_is_refused_for_a_gpt_and_an_analogy(client, registry):
    with pytest.raises(ApiError, match="next-token distributions.*cosine, dot or euclidean") as gpt:
        await neighbours(client, model=GPT_ID, token="e", metric="jensen_shannon")
    with pytest.raises(ApiError, match="analogies rank by cosine") as analogy:
        await neighbours(
            client, model=BIGRAM_ID, positive=["e"], negative=["a"], metric="jensen_shannon"
        )
    assert gpt.value.param == analogy.value.param == "metric"


# -- tokenization -----------------------------------------------------------------------


async def test_tokenize_and_detokenize_round_trip(client, registry):
    tokens = await call(client, "/v1/tokenize", TokenizeResponse, model=GPT_ID, text="To be")
    assert tokens.tokens == list("To be")
    text = (
        await call(client, "/v1/detokenize", DetokenizeResponse, model=GPT_ID, ids=tokens.ids)
    ).text
    assert text == "To be"


async def test_detokenize_refuses_an_id_outside_the_vocabulary(client, registry):
    vocab = registry.get(GPT_ID).vocab_size
    with pytest.raises(ApiError, match=f"0 to {vocab - 1}") as caught:
        await call(client, "/v1/detokenize", DetokenizeResponse, model=GPT_ID, ids=[0, vocab])
    assert caught.value.param == "ids[1]"
