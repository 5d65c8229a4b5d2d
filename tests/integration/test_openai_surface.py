"""What the clients people point at a local server ask for beyond plain completions, with the
official `openai` client against a real server: token-id prompts, scoring, penalties and
logit bias, best_of, embeddings, chat, models.retrieve."""

from __future__ import annotations

import base64
import json
import math
import struct
import subprocess
import sys
from collections import Counter

import openai
import pytest

from tests.integration.conftest import REPO
from tests.service.tiny_models import BIGRAM_ID, GPT_BLOCK_SIZE, GPT_ID

PROMPT = "First Citizen:\nBefore we"


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def token_ids(client, model: str, text: str) -> list[int]:
    return client.post("/v1/tokenize", json={"model": model, "text": text}).json()["ids"]


# -- prompts as token ids -------------------------------------------------------------------


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_a_token_id_prompt_is_the_same_as_its_text(oai, client, model):
    ids = token_ids(client, model, PROMPT)
    as_text = oai.completions.create(model=model, prompt=PROMPT, max_tokens=20, seed=3)
    as_ids = oai.completions.create(model=model, prompt=ids, max_tokens=20, seed=3)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage.prompt_tokens == len(ids)
    several = oai.completions.create(model=model, prompt=[ids, ids[:3]], max_tokens=5, seed=3)
    assert [c.index for c in several.choices] == [0, 1]


def test_bad_token_ids_and_mixed_lists_are_refused_by_name(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=GPT_ID, prompt=[[1, 2], [3, 99999]], max_tokens=2)
    assert caught.value.body["param"] == "prompt[1][1]" and "99999" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=GPT_ID, prompt=["ab", 3], max_tokens=2)
    assert caught.value.body["param"] == "prompt" and "mixes" in caught.value.message


# -- scoring ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_echo_with_no_new_tokens_scores_the_prompt_as_eval_does(oai, server, tmp_path, model):
    prompt = PROMPT[:GPT_BLOCK_SIZE]  # within the context, where both read the same tokens
    scored = oai.completions.create(
        model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=0
    ).choices[0]
    assert scored.text == prompt and scored.finish_reason == "length"
    logprobs = scored.logprobs.token_logprobs
    assert logprobs[0] is None and len(logprobs) == len(prompt)
    text = tmp_path / "prompt.txt"
    text.write_text(prompt, encoding="utf-8")
    command = [sys.executable, "-m", "service.cli", "eval", "--checkpoint",
               str(server.checkpoints / model), "--data", str(text), "--split", "all",
               "--device", "cpu"]  # fmt: skip
    evaluated = json.loads(
        subprocess.run(command, cwd=REPO, capture_output=True, check=True).stdout
    )
    assert evaluated["tokens"] == len(prompt) - 1
    assert -sum(logprobs[1:]) == pytest.approx(evaluated["loss"] * evaluated["tokens"], rel=1e-4)


def test_no_new_tokens_without_echo_is_refused(oai):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=GPT_ID, prompt=PROMPT, max_tokens=0)
    assert caught.value.body["param"] == "max_tokens"


# -- logit bias, penalties, best_of -------------------------------------------------------


def greedy(oai, **extra) -> str:
    return (
        oai.completions.create(model=GPT_ID, prompt=PROMPT, max_tokens=24, temperature=0, **extra)
        .choices[0]
        .text
    )


def test_logit_bias_keys_must_be_token_ids(oai):
    for key in ("x", "-1", "99999"):
        with pytest.raises(openai.BadRequestError) as caught:
            oai.completions.create(model=GPT_ID, prompt="a", max_tokens=1, logit_bias={key: 1})
        assert caught.value.body["param"] == "logit_bias" and repr(key) in caught.value.message


def test_logit_bias_bans_and_forces_tokens(oai, client):
    plain = greedy(oai)
    first = token_ids(client, GPT_ID, plain[0])[0]
    banned = greedy(oai, logit_bias={str(first): -100})
    assert banned[0] != plain[0]
    forced = (
        oai.completions.create(
            model=GPT_ID, prompt=PROMPT, max_tokens=10, seed=1, logit_bias={"5": 100}
        )
        .choices[0]
        .text
    )
    assert (
        forced
        == client.post("/v1/detokenize", json={"model": GPT_ID, "ids": [5] * 10}).json()["text"]
    )


def test_a_frequency_penalty_makes_repeats_rarer(oai):
    plain, penalized = greedy(oai), greedy(oai, frequency_penalty=2.0, presence_penalty=1.0)
    assert penalized != plain
    assert max(Counter(penalized).values()) < max(Counter(plain).values())


def test_best_of_returns_the_candidate_with_the_best_mean_logprob(oai):
    args = dict(model=GPT_ID, prompt=PROMPT, max_tokens=12, seed=5, temperature=1.5)
    candidates = oai.completions.create(**args, n=4, logprobs=0).choices
    means = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in candidates]
    best = oai.completions.create(**args, n=1, best_of=4)
    assert [c.text for c in best.choices] == [candidates[means.index(max(means))].text]
    assert best.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in candidates)
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(**args, best_of=4, stream=True)


# -- embeddings ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_embeddings_are_stable_batch_invariant_and_take_token_ids(oai, client, model):
    one = oai.embeddings.create(model=model, input="ROMEO")
    again = oai.embeddings.create(model=model, input="ROMEO")
    batch = oai.embeddings.create(model=model, input=["the king", "ROMEO"])
    vector = one.data[0].embedding
    assert vector == again.data[0].embedding and len(vector) == len(batch.data[0].embedding)
    assert batch.data[1].embedding == pytest.approx(vector, abs=1e-6)
    by_ids = oai.embeddings.create(model=model, input=token_ids(client, model, "ROMEO"))
    assert by_ids.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert one.usage.prompt_tokens == 5 and all(math.isfinite(x) for x in vector)
    raw = client.post(
        "/v1/embeddings", json={"model": model, "input": "ROMEO", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(vector)}f", base64.b64decode(raw))
    assert list(decoded) == pytest.approx(vector, abs=1e-6)


def test_embedding_dimensions_other_than_the_models_are_refused(oai):
    size = len(oai.embeddings.create(model=GPT_ID, input="a").data[0].embedding)
    assert oai.embeddings.create(model=GPT_ID, input="a", dimensions=size).data
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model=GPT_ID, input="a", dimensions=size - 1)
    assert caught.value.body["param"] == "dimensions"


# -- chat ---------------------------------------------------------------------------------

MESSAGES = [
    {"role": "system", "content": "You are a citizen of Rome."},
    {"role": "user", "content": "What say you?"},
]


def test_chat_streaming_adds_up_to_the_whole_reply(oai):
    args = dict(model=GPT_ID, messages=MESSAGES, max_tokens=40, seed=9, n=2)
    whole = oai.chat.completions.create(**args)
    assert [c.message.role for c in whole.choices] == ["assistant", "assistant"]
    texts = {0: "", 1: ""}
    for chunk in oai.chat.completions.create(**args, stream=True):
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {c.index: c.message.content for c in whole.choices}
    for choice in whole.choices:
        assert "\nuser:" not in choice.message.content  # the next turn stops it
        assert choice.finish_reason in ("stop", "length")


def test_chat_logprobs_come_in_the_chat_form(oai):
    reply = oai.chat.completions.create(
        model=GPT_ID, messages=MESSAGES, max_tokens=6, seed=2, logprobs=True, top_logprobs=2
    ).choices[0]
    content = reply.logprobs.content
    assert "".join(t.token for t in content) == reply.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert all(bytes(t.bytes).decode() == t.token for t in content)


def test_models_retrieve(oai):
    assert oai.models.retrieve(GPT_ID).id == GPT_ID
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-huge")
