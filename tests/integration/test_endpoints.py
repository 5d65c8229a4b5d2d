"""Every endpoint of a real server process, over HTTP."""

import math
import threading
import time

import pytest
import torch

from models.checkpoint import load_checkpoint
from tests.service.tiny_models import BIGRAM_ID, GPT_BLOCK_SIZE, GPT_ID

MODELS = [BIGRAM_ID, GPT_ID]


def post(client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "models": MODELS}


def test_models_are_listed_and_the_broken_folder_is_skipped_with_its_reason(client, server):
    body = client.get("/v1/models").json()
    assert [model["id"] for model in body["data"]] == MODELS
    assert body["limits"] == {
        "max_new_tokens": 1024,
        "max_prompt_chars": 4096,
        "max_request_sequences": 64,
        "max_client_sequences": 128,
    }
    bigram, gpt = body["data"]
    assert (bigram["kind"], bigram["context_length"]) == ("bigram", 1)
    assert (gpt["kind"], gpt["context_length"]) == ("gpt", GPT_BLOCK_SIZE)
    for model in body["data"]:
        assert model["device"] == "cpu" and model["parameters"] > 0 and model["vocab_size"] > 0
        assert model["metrics"]["val_loss"] > 0
    log = server.log()
    assert "skipping checkpoint" in log and "broken" in log and "does not match the sha256" in log


@pytest.mark.parametrize("model", MODELS)
def test_generation_is_reproducible_with_a_seed(client, model):
    body = {"model": model, "prompt": "The ", "max_new_tokens": 40, "seed": 1234,
            "temperature": 0.9, "top_k": 20, "top_p": 0.95}  # fmt: skip
    first, second = post(client, "/v1/generate", body), post(client, "/v1/generate", body)
    assert first == second
    assert first["model"] == model and first["finish_reason"] == "length"
    assert len(first["token_ids"]) == 40 and len(first["text"]) == 40
    assert first["usage"] == {"prompt_tokens": 4, "completion_tokens": 40}
    others = [post(client, "/v1/generate", body | {"seed": seed})["text"] for seed in range(3)]
    assert any(text != first["text"] for text in others)


def test_temperature_zero_is_greedy(client):
    body = {"model": GPT_ID, "prompt": "the", "max_new_tokens": 10, "temperature": 0}
    first = post(client, "/v1/generate", body)
    assert post(client, "/v1/generate", body) == first
    distribution = post(client, "/v1/next-token", {"model": GPT_ID, "context": "the"})
    assert first["token_ids"][0] == distribution["distribution"][0]["id"]


def test_an_empty_prompt_is_allowed(client):
    result = post(client, "/v1/generate", {"model": GPT_ID, "max_new_tokens": 12, "seed": 5})
    assert result["usage"] == {"prompt_tokens": 0, "completion_tokens": 12}


def test_the_gpt_reads_only_its_last_block_of_a_long_prompt(client):
    tail = "and then the "
    prompt = "x" * (GPT_BLOCK_SIZE * 5) + "e" * (GPT_BLOCK_SIZE - len(tail)) + tail
    other = "q" * 3 + prompt[3:]
    body = {"model": GPT_ID, "max_new_tokens": 20, "seed": 9}
    assert post(client, "/v1/generate", body | {"prompt": prompt})["usage"]["prompt_tokens"] == len(
        prompt
    )
    assert (
        post(client, "/v1/generate", body | {"prompt": prompt})["text"]
        == post(client, "/v1/generate", body | {"prompt": other})["text"]
    )


def test_stop_strings_end_the_text_before_them(client):
    body = {"model": BIGRAM_ID, "max_new_tokens": 300, "seed": 21}
    full = post(client, "/v1/generate", body)
    stop = full["text"][20:22]
    cut = post(client, "/v1/generate", body | {"stop": stop})
    index = full["text"].index(stop)
    assert cut["text"] == full["text"][:index] and cut["finish_reason"] == "stop"
    assert cut["token_ids"] == full["token_ids"][:index]
    # Usage counts every token generated, the stop string's too (as OpenAI's API does).
    assert cut["usage"]["completion_tokens"] == index + len(stop)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("context", ["", "e", "To be, or not to be"])
def test_next_token_probabilities_sum_to_one(client, model, context):
    result = post(client, "/v1/next-token", {"model": model, "context": context})
    distribution = result["distribution"]
    assert result["context"] == context
    assert math.fsum(entry["prob"] for entry in distribution) == pytest.approx(1.0, abs=1e-5)
    probs = [entry["prob"] for entry in distribution]
    assert probs == sorted(probs, reverse=True)
    assert len({entry["id"] for entry in distribution}) == len(distribution)
    assert result["entropy"] == pytest.approx(
        -math.fsum(p * math.log(p) for p in probs if p > 0), abs=1e-6
    )


def test_a_bigram_row_is_the_softmax_of_its_table_row(client, server):
    checkpoint = load_checkpoint(server.checkpoints / BIGRAM_ID)
    table = checkpoint.model.token_vectors().detach().double()
    for character in ["\n", " ", "e", "T"]:
        row = torch.softmax(table[checkpoint.tokenizer.encode(character)[0]], dim=-1)
        result = post(client, "/v1/next-token", {"model": BIGRAM_ID, "context": "ab" + character})
        assert len(result["distribution"]) == checkpoint.tokenizer.vocab_size
        for entry in result["distribution"]:
            assert entry["token"] == checkpoint.tokenizer.token_text(entry["id"])
            assert entry["prob"] == pytest.approx(float(row[entry["id"]]), abs=1e-7)
            assert 0 < entry["empirical_prob"] < 1


def test_next_token_top_k_and_temperature(client):
    body = {"model": GPT_ID, "context": "th"}
    top = post(client, "/v1/next-token", body | {"top_k": 5})["distribution"]
    everything = post(client, "/v1/next-token", body)["distribution"]
    assert top == everything[:5]
    assert all("empirical_prob" not in entry for entry in everything)
    sharp = post(client, "/v1/next-token", body | {"temperature": 0.25})["distribution"]
    assert sharp[0]["id"] == everything[0]["id"] and sharp[0]["prob"] > everything[0]["prob"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_a_token_is_never_its_own_neighbour(client, model, metric):
    for token in ["e", " ", "T"]:
        body = {"model": model, "token": token, "k": 1000, "metric": metric}
        result = post(client, "/v1/neighbours", body)
        assert result["query"] == {"token": token, "metric": metric}
        tokens = [n["token"] for n in result["neighbours"]]
        assert token not in tokens and len(tokens) == len(set(tokens))
        scores = [n["score"] for n in result["neighbours"]]
        assert scores == sorted(scores, reverse=metric != "euclidean")


def test_neighbours_k_and_analogy(client):
    assert (
        len(post(client, "/v1/neighbours", {"model": GPT_ID, "token": "a", "k": 3})["neighbours"])
        == 3
    )
    body = {"model": GPT_ID, "positive": ["b", "A"], "negative": ["a"], "k": 5}
    result = post(client, "/v1/neighbours", body)
    assert result["query"] == {"positive": ["b", "A"], "negative": ["a"], "metric": "cosine"}
    assert len(result["neighbours"]) == 5
    assert not {"a", "b", "A"} & {n["token"] for n in result["neighbours"]}
    assert all(-1 <= n["score"] <= 1 for n in result["neighbours"])


def test_tokenize_and_detokenize(client):
    tokens = post(client, "/v1/tokenize", {"model": GPT_ID, "text": "To be!"})
    assert tokens["model"] == GPT_ID and tokens["tokens"] == list("To be!")
    text = post(client, "/v1/detokenize", {"model": GPT_ID, "ids": tokens["ids"]})
    assert text == {"model": GPT_ID, "text": "To be!"}
    assert post(client, "/v1/tokenize", {"model": BIGRAM_ID, "text": ""})["ids"] == []


def test_metrics_count_generated_tokens(client):
    def generated() -> float:
        metrics = client.get("/metrics").text
        prefix = f'tinygpt_generated_tokens_total{{model="{BIGRAM_ID}",replica='
        return sum(
            float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)
        )

    before = generated()
    post(client, "/v1/generate", {"model": BIGRAM_ID, "max_new_tokens": 17})
    assert generated() == before + 17
    assert (
        'tinygpt_http_requests_total{app_name="tinygpt-serve",method="POST",path="/v1/generate"'
        in client.get("/metrics").text
    )


def test_openapi_docs(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    schema = client.get("/docs/openapi.json").json()
    assert {"/health", "/ready", "/v1/models", "/v1/generate", "/v1/next-token", "/v1/neighbours",
            "/v1/tokenize", "/v1/detokenize"} <= set(schema["paths"])  # fmt: skip


def test_model_work_does_not_block_the_event_loop(client):
    finished: dict[str, float] = {}

    def generate() -> None:
        # 64 sequences of 1024 tokens: seconds of model work, however fast the machine
        body = {"model": GPT_ID, "prompt": ["a"] * 8, "n": 8, "max_tokens": 1024, "seed": 0}
        post(client, "/v1/completions", body)
        finished["generate"] = time.monotonic()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.1)  # let the generation start
    started = time.monotonic()
    assert client.get("/health").status_code == 200
    finished["health"] = time.monotonic()
    worker.join()
    assert finished["health"] < finished["generate"]
    assert finished["health"] - started < 0.5
