"""The OpenAI-compatible surface, driven by the official `openai` client against a real server:
`POST /v1/completions` (whole and streamed), `GET /v1/models`, and OpenAI's error envelope."""

import json
import math
import re
import time
from datetime import datetime

import httpx
import openai
import pytest

from tests.integration.conftest import SHIPPED_GPT
from tests.service.tiny_models import BIGRAM_ID, GPT_ID


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_a_plain_completion(oai, model):
    result = oai.completions.create(model=model, prompt="Th", max_tokens=20, seed=3)
    assert result.object == "text_completion" and result.model == model
    assert result.id.startswith("cmpl-") and result.created > 0
    [choice] = result.choices
    assert choice.index == 0 and choice.logprobs is None
    assert choice.finish_reason == "length" and choice.text
    assert result.usage.prompt_tokens == 2 and result.usage.completion_tokens == 20
    assert result.usage.total_tokens == 22


def test_n_choices_over_a_list_of_prompts_are_prompt_major_and_differ(oai):
    result = oai.completions.create(
        model=GPT_ID, prompt=["Th", "A"], n=2, max_tokens=30, seed=7, temperature=1.0
    )
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    texts = [c.text for c in result.choices]
    assert texts[0] != texts[1]  # seed + choice index: different, yet reproducible
    again = oai.completions.create(
        model=GPT_ID, prompt=["Th", "A"], n=2, max_tokens=30, seed=7, temperature=1.0
    )
    assert [c.text for c in again.choices] == texts
    # Choice 2 is the second prompt's first: the same as asking for that prompt alone with seed+2.
    alone = oai.completions.create(model=GPT_ID, prompt="A", max_tokens=30, seed=9)
    assert alone.choices[0].text == texts[2]
    assert result.usage.prompt_tokens == 3 and result.usage.completion_tokens == 120


def test_seeded_completions_are_reproducible(oai):
    def text(seed):
        return oai.completions.create(model=GPT_ID, prompt="Th", max_tokens=40, seed=seed)

    assert text(11).choices[0].text == text(11).choices[0].text
    assert text(11).choices[0].text != text(12).choices[0].text


def test_stop_sequences_cut_the_text(oai):
    full = oai.completions.create(model=BIGRAM_ID, prompt="", max_tokens=300, seed=21)
    text = full.choices[0].text
    stop = text[20:22]
    cut = oai.completions.create(model=BIGRAM_ID, prompt="", max_tokens=300, seed=21, stop=stop)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    listed = oai.completions.create(
        model=BIGRAM_ID, prompt="", max_tokens=300, seed=21, stop=["\u00a7", stop]
    )
    assert listed.choices[0].text == cut.choices[0].text


def test_logprobs_have_openai_shape(oai):
    result = oai.completions.create(model=GPT_ID, prompt="Th", max_tokens=10, seed=1, logprobs=3)
    choice = result.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 10
    assert "".join(lp.tokens) == choice.text
    offsets = [sum(len(t) for t in lp.tokens[:i]) for i in range(10)]
    assert lp.text_offset == offsets
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert math.isfinite(logprob) and logprob <= 0
        assert 1 <= len(top) <= 3 and all(v <= 0 for v in top.values())
        assert max(top.values()) >= logprob - 1e-5
        if token in top:
            assert top[token] == pytest.approx(logprob, abs=1e-5)


def test_echo_with_logprobs_scores_the_prompt(oai):
    result = oai.completions.create(
        model=GPT_ID, prompt="The", max_tokens=5, seed=1, logprobs=2, echo=True
    )
    choice = result.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith("The") and len(lp.tokens) == 3 + 5
    assert lp.tokens[:3] == ["T", "h", "e"]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(math.isfinite(v) and v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == list(range(8))
    plain = oai.completions.create(model=GPT_ID, prompt="The", max_tokens=5, seed=1, echo=True)
    assert plain.choices[0].text == choice.text and plain.choices[0].logprobs is None


@pytest.mark.parametrize("model", [BIGRAM_ID, GPT_ID])
def test_streamed_chunks_add_up_to_the_whole_completion(oai, model):
    args = {"model": model, "prompt": "Th", "max_tokens": 30, "seed": 5, "n": 2}
    whole = oai.completions.create(**args)
    texts = {0: "", 1: ""}
    finish = {}
    for chunk in oai.completions.create(**args, stream=True):
        assert chunk.object == "text_completion" and chunk.model == model
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {0: "length", 1: "length"}


def test_models_list_in_openai_shape(oai, client):
    models = oai.models.list()
    ids = [model.id for model in models.data]
    assert BIGRAM_ID in ids and GPT_ID in ids
    body = client.get("/v1/models").json()
    made = {m["id"]: datetime.fromisoformat(m["created_at"]) for m in body["data"]}
    for model in models.data:
        assert model.object == "model" and model.owned_by == "tinygpt-serve"
        assert model.created == int(made[model.id].timestamp())  # Unix time of the checkpoint
        assert abs(time.time() - model.created) < 7 * 24 * 3600  # trained by this session
    assert body["object"] == "list" and "limits" in body
    assert {"kind", "vocab_size", "context_length"} <= set(body["data"][0])


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"top_p": 5}, "top_p"), ({"logprobs": 6}, "logprobs"), ({"prompt": "a~"}, "prompt"),
     ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"n": 2, "best_of": 1}, "best_of"),
     ({"logit_bias": {"99999": 2}}, "logit_bias"), ({"suffix": "end"}, "suffix"),
     ({"max_tokens": 100000}, "max_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop")],
)  # fmt: skip
def test_invalid_requests_raise_bad_request(oai, extra, param):
    args = {"model": GPT_ID, "prompt": "Th", "max_tokens": 5} | extra
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(**args)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "code" in error and error["message"]


def test_neutral_openai_fields_are_accepted(oai):
    result = oai.completions.create(
        model=GPT_ID, prompt="Th", max_tokens=3, frequency_penalty=0, presence_penalty=0,
        best_of=1, logit_bias={}, suffix="", user="someone",
    )  # fmt: skip
    assert result.choices[0].finish_reason == "length"


def test_unknown_model_raises_not_found(oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="nope", prompt="Th", max_tokens=5)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_openai_error_envelope_over_http(client):
    response = client.post("/v1/completions", json={"model": GPT_ID, "bogus": 1})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["param"] == "bogus"
    response = client.post("/v1/completions", content=b"{not json")
    assert response.status_code == 400 and set(response.json()["error"]) >= {"code"}


# -- raw SSE ------------------------------------------------------------------------------


def test_raw_sse_framing(client):
    body = {"model": GPT_ID, "prompt": "Th", "max_tokens": 8, "seed": 2, "stream": True,
            "logprobs": 1, "stream_options": {"include_usage": True}}  # fmt: skip
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    assert raw.endswith("data: [DONE]\n\n")
    blocks = raw.strip("\n").split("\n\n")
    assert all(re.fullmatch(r"data: .+", block) for block in blocks), raw
    chunks = [json.loads(block.removeprefix("data: ")) for block in blocks[:-1]]
    tokens = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is None]
    assert len(tokens) == 8
    assert all(len(c["choices"][0]["logprobs"]["tokens"]) == 1 for c in tokens)
    assert [c["choices"][0]["logprobs"]["text_offset"][0] for c in tokens] == list(range(8))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_bad_streamed_request_is_refused_before_the_stream(client):
    body = {"model": GPT_ID, "prompt": "Th", "top_p": 0, "stream": True}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == "top_p"


def running(client: httpx.Client) -> float:
    pattern = rf'^tinygpt_engine_running_sequences{{model="{SHIPPED_GPT}",replica="[^"]*"}} (\S+)$'
    match = re.search(pattern, client.get("/metrics").text, re.M)
    assert match, "no running_sequences metric"
    return float(match.group(1))


def test_a_disconnect_mid_stream_frees_every_choice_slot(shipped_gpt_server):
    server = shipped_gpt_server
    body = {"model": SHIPPED_GPT, "prompt": "ROMEO:", "max_tokens": 1024, "n": 2, "seed": 1,
            "stream": True}  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with (
            httpx.Client(base_url=server.url, timeout=30) as streaming,
            streaming.stream("POST", "/v1/completions", json=body) as response,
        ):
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: {")
                if received == 6:
                    assert running(client) == 2
                    break
        closed_at = time.monotonic()
        while running(client):
            assert time.monotonic() - closed_at < 5, "the slots were not freed"
            time.sleep(0.01)
