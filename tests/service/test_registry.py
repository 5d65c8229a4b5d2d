"""The registry on its own: loading, and the model work behind every endpoint."""

import logging
import math
from collections import Counter

import pytest
import torch

from models.checkpoint import load_checkpoint
from service.exceptions import (
    InvalidRequestError,
    NoModelsLoadedError,
    NotReadyError,
    UnknownModelError,
)
from service.registry import ModelRegistry
from service.schemas import (
    DetokenizeRequest,
    NeighboursRequest,
    NextTokenRequest,
    TokenizeRequest,
)
from service.settings import Settings
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

pytestmark = pytest.mark.anyio


@pytest.fixture
async def registry(settings: Settings) -> ModelRegistry:
    registry = ModelRegistry(settings)
    await registry.load()
    return registry


async def test_loads_every_checkpoint_folder(registry):
    assert registry.ready
    assert registry.model_ids == [BIGRAM_ID, GPT_ID]
    bigram, gpt = registry.describe()
    assert (bigram.kind, bigram.context_length, bigram.device) == ("bigram", 1, "cpu")
    assert bigram.parameters == bigram.vocab_size**2
    assert (gpt.kind, gpt.context_length) == ("gpt", 16)
    assert (
        gpt.parameters
        == load_checkpoint(registry.settings.checkpoints + "/gpt-tiny").model.num_parameters()
    )
    assert "val_loss" in gpt.metrics


async def test_a_checkpoint_that_fails_to_load_is_skipped_with_its_reason(
    folder_with_a_broken_checkpoint, caplog
):
    registry = ModelRegistry(
        Settings(checkpoints=str(folder_with_a_broken_checkpoint), device="cpu")
    )
    with caplog.at_level(logging.ERROR, logger="service.registry"):
        await registry.load()
    assert registry.model_ids == [BIGRAM_ID, GPT_ID]
    assert "skipping checkpoint" in caplog.text and "broken" in caplog.text
    assert "does not match the sha256" in caplog.text


async def test_refuses_when_no_checkpoint_loads(folder_with_a_broken_checkpoint):
    for model_id in (BIGRAM_ID, GPT_ID):
        (folder_with_a_broken_checkpoint / model_id / "manifest.json").unlink()
    registry = ModelRegistry(
        Settings(checkpoints=str(folder_with_a_broken_checkpoint), device="cpu")
    )
    with pytest.raises(NoModelsLoadedError, match="could be loaded") as caught:
        await registry.load()
    assert "broken" in str(caught.value) and "no manifest.json" in str(caught.value)
    assert not registry.ready


async def test_refuses_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(NoModelsLoadedError, match="does not exist"):
        await ModelRegistry(Settings(checkpoints=str(tmp_path / "none"), device="cpu")).load()
    with pytest.raises(NoModelsLoadedError, match="no checkpoint under"):
        await ModelRegistry(Settings(checkpoints=str(tmp_path), device="cpu")).load()


async def test_nothing_is_served_before_loading(settings):
    registry = ModelRegistry(settings)
    with pytest.raises(NotReadyError):
        registry.tokenize(TokenizeRequest(model=BIGRAM_ID, text="a"))


async def test_unknown_model_names_the_available_ones(registry):
    with pytest.raises(UnknownModelError, match="bigram-tiny, gpt-tiny") as caught:
        registry.tokenize(TokenizeRequest(model="gpt-huge", text="a"))
    assert caught.value.param == "model"


async def test_a_character_outside_the_vocabulary_is_named(registry):
    with pytest.raises(InvalidRequestError, match="'~' at position 2") as caught:
        registry.get(GPT_ID).prompt_ids("ab~")
    assert caught.value.param == "prompt"


# -- next-token distribution ------------------------------------------------------------


async def test_bigram_distribution_is_the_softmax_of_its_table_row(registry):
    checkpoint = load_checkpoint(registry.settings.checkpoints + "/bigram-tiny")
    row_id = checkpoint.tokenizer.encode("e")[0]
    expected = torch.softmax(checkpoint.model.token_vectors()[row_id].detach().double(), dim=-1)
    result = await registry.next_token(NextTokenRequest(model=BIGRAM_ID, context="the"))
    assert len(result.distribution) == checkpoint.tokenizer.vocab_size
    for entry in result.distribution:
        assert entry.prob == pytest.approx(float(expected[entry.id]), abs=1e-6)
        assert entry.logprob == pytest.approx(math.log(entry.prob), abs=1e-9)
    probs = [entry.prob for entry in result.distribution]
    assert probs == sorted(probs, reverse=True)
    assert result.entropy == pytest.approx(-float((expected * expected.log()).sum()), abs=1e-6)


async def test_bigram_entries_carry_the_smoothed_training_frequencies(registry, small_corpus):
    # Counted here from the corpus text itself: the first 90% of its characters, as trained.
    text = small_corpus.read_text(encoding="utf-8")
    train = text[: int(0.9 * len(text))]
    following = Counter(b for a, b in zip(train, train[1:], strict=False) if a == "e")
    vocab = registry.get(BIGRAM_ID).vocab_size
    result = await registry.next_token(NextTokenRequest(model=BIGRAM_ID, context="e"))
    for entry in result.distribution:
        smoothed = (following[entry.token] + 1) / (sum(following.values()) + vocab)
        assert entry.empirical_prob == pytest.approx(smoothed, rel=1e-5)


async def test_gpt_distribution_sums_to_one_and_reads_only_its_block(registry):
    long_context = "abc " * 20
    tail = long_context[-16:]
    full = await registry.next_token(NextTokenRequest(model=GPT_ID, context=long_context))
    assert sum(entry.prob for entry in full.distribution) == pytest.approx(1.0, abs=1e-5)
    assert all(entry.empirical_prob is None for entry in full.distribution)
    assert (
        full.distribution
        == (await registry.next_token(NextTokenRequest(model=GPT_ID, context=tail))).distribution
    )


async def test_top_k_and_temperature(registry):
    hot = await registry.next_token(NextTokenRequest(model=GPT_ID, context="th", temperature=5.0))
    cold = await registry.next_token(
        NextTokenRequest(model=GPT_ID, context="th", temperature=0.2, top_k=3)
    )
    assert len(cold.distribution) == 3
    assert cold.distribution[0].prob > hot.distribution[0].prob
    assert cold.entropy < hot.entropy


# -- neighbours -------------------------------------------------------------------------


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
async def test_a_token_is_never_its_own_neighbour(registry, model, metric):
    result = await registry.neighbours(
        NeighboursRequest(model=model, token="e", k=100, metric=metric)
    )
    tokens = [n.token for n in result.neighbours]
    assert "e" not in tokens and len(tokens) == registry.get(model).vocab_size - 1
    scores = [n.score for n in result.neighbours]
    assert scores == sorted(scores, reverse=metric != "euclidean")


async def test_cosine_scores_match_the_token_vectors(registry):
    vectors = registry.get(GPT_ID).model.token_vectors().detach()
    tokenizer = registry.get(GPT_ID).tokenizer
    result = await registry.neighbours(NeighboursRequest(model=GPT_ID, token="a", k=3))
    a = vectors[tokenizer.encode("a")[0]]
    for neighbour in result.neighbours:
        expected = torch.cosine_similarity(a, vectors[neighbour.id], dim=0)
        assert neighbour.score == pytest.approx(float(expected), abs=1e-5)


async def test_analogy_follows_gensim_and_excludes_every_query_token(registry):
    model = registry.get(GPT_ID)
    unit = torch.nn.functional.normalize(model.model.token_vectors().detach(), dim=1)
    a, b, c = (model.tokenizer.encode(ch)[0] for ch in "abc")
    query = torch.nn.functional.normalize((unit[b] + unit[c] - unit[a]) / 3, dim=0)
    scores = unit @ query
    scores[[a, b, c]] = -math.inf
    request = NeighboursRequest(model=GPT_ID, positive=["b", "c"], negative=["a"], k=5)
    result = await registry.neighbours(request)
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
async def test_bad_neighbour_queries_say_what_is_wrong(registry, request_fields, param, message):
    with pytest.raises(InvalidRequestError, match=message) as caught:
        await registry.neighbours(NeighboursRequest(model=GPT_ID, **request_fields))
    assert caught.value.param == param


# -- tokenization -----------------------------------------------------------------------


async def test_tokenize_and_detokenize_round_trip(registry):
    tokens = registry.tokenize(TokenizeRequest(model=GPT_ID, text="To be"))
    assert tokens.tokens == list("To be")
    assert registry.detokenize(DetokenizeRequest(model=GPT_ID, ids=tokens.ids)).text == "To be"


async def test_detokenize_refuses_an_id_outside_the_vocabulary(registry):
    vocab = registry.get(GPT_ID).vocab_size
    with pytest.raises(InvalidRequestError, match=f"0 to {vocab - 1}") as caught:
        registry.detokenize(DetokenizeRequest(model=GPT_ID, ids=[0, vocab]))
    assert caught.value.param == "ids[1]"
