"""The OpenAI request Struct's decoding, and the registry's prompt scoring behind `echo`."""

import math

import msgspec
import pytest

from service.inspection import Inspector, next_token_distribution
from service.openai.schemas import CompletionRequest
from service.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import corpus_text
from tests.service.tiny_models import BIGRAM_ID, GPT_ID

PROMPT = corpus_text(400)[300:306]  # six characters the tiny models know


def decode(**fields) -> CompletionRequest:
    return msgspec.convert({"model": GPT_ID} | fields, CompletionRequest)


def test_defaults_follow_openai():
    request = decode()
    assert request.prompt == "" and request.max_tokens == 16 and request.n == 1
    assert request.temperature == 1.0 and request.top_p == 1.0
    assert request.logprobs is None and request.stop is None and not request.echo


def test_prompts_and_stops_as_strings_or_lists_and_nulls():
    request = decode(prompt=["a", "b"], stop="x", max_tokens=None, temperature=None, n=None)
    assert request.prompt == ["a", "b"] and request.stop == "x" and request.max_tokens is None
    assert decode(stop=["x", "y"]).stop == ["x", "y"]
    assert decode(prompt=[1, 2]).prompt == [1, 2]  # token ids
    assert decode(prompt=[[1, 2], [3]]).prompt == [[1, 2], [3]]


@pytest.mark.parametrize(
    ("fields", "where"),
    [({"logprobs": 6}, "logprobs"), ({"logprobs": -1}, "logprobs"), ({"top_p": 0}, "top_p"),
     ({"n": 0}, "n"), ({"max_tokens": -1}, "max_tokens"), ({"temperature": -1}, "temperature"),
     ({"stop": ""}, "stop"), ({"prompt": [1, -2]}, "prompt"), ({"prompt": [[]]}, "prompt"),
     ({"frequency_penalty": 3}, "frequency_penalty"), ({"presence_penalty": -2.5}, "presence"),
     ({"logit_bias": {"3": 101}}, "logit_bias"),
     ({"best_of": 17}, "best_of"),
     ({"whatever": 1}, "whatever"), ({"stream_options": {"x": 1}}, "stream_options")],
)  # fmt: skip
def test_out_of_range_or_unknown_fields_are_refused(fields, where):
    with pytest.raises(msgspec.ValidationError, match=where):
        decode(**fields)


@pytest.fixture
async def registry(settings: Settings):
    registry = ModelRegistry(settings)
    await registry.load()
    yield registry
    await registry.unload()


async def score_prompt(registry: ModelRegistry, model_id: str, prompt: str, top: int) -> list:
    model = registry.get(model_id)
    return await Inspector(registry.settings).score_prompt(model, model.encode(prompt, "p"), top)


@pytest.mark.anyio
@pytest.mark.parametrize("model_id", [BIGRAM_ID, GPT_ID])
async def test_prompt_scores_match_the_next_token_distribution(registry, model_id):
    scores = await score_prompt(registry, model_id, PROMPT, 3)
    assert [s.text for s in scores] == list(PROMPT)
    assert scores[0].logprob is None and scores[0].top_logprobs == []
    model = registry.get(model_id)
    ids = model.encode(PROMPT, "prompt")
    for position in range(1, len(ids)):
        distribution, _ = next_token_distribution(model, ids[:position], 1.0, None)
        expected = {p.id: p.logprob for p in distribution}
        assert scores[position].logprob == pytest.approx(expected[ids[position]], abs=1e-4)
        assert len(scores[position].top_logprobs) == 3
        best = max(expected.values())
        assert scores[position].top_logprobs[0][1] == pytest.approx(best, abs=1e-4)


@pytest.mark.anyio
async def test_a_prompt_longer_than_the_context_is_scored_in_windows(registry):
    block = registry.get(GPT_ID).model.block_size
    prompt = corpus_text(3 * block + 5)
    scores = await score_prompt(registry, GPT_ID, prompt, 0)
    assert len(scores) == len(prompt)
    assert all(math.isfinite(s.logprob) and s.logprob <= 0 for s in scores[1:])
    # The first window is scored with exactly the context a shorter prompt would have.
    short = await score_prompt(registry, GPT_ID, prompt[:block], 0)
    assert [s.logprob for s in short[1:]] == pytest.approx([s.logprob for s in scores[1:block]])
