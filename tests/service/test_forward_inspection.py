"""Inside one forward pass, in-process: a GPT's attention weights and its logit lens, on the
shipped models and the tiny ones; and the neighbours the shipped models give."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import torch
from litestar.testing import AsyncTestClient

from models.checkpoint import save_checkpoint
from models.gpt import GPT, GPTConfig
from models.tokenizer import CharTokenizer
from service.app import create_app
from service.schemas import (
    MAX_ATTENTION_WEIGHTS,
    MAX_LENS_PREDICTIONS,
    MAX_LENS_TOP_K,
    AttentionResponse,
    LogitLensResponse,
    NeighboursResponse,
    NextTokenResponse,
    TokenizeResponse,
)
from service.settings import Settings
from tests.service.test_inspection import ApiError, call
from tests.service.tiny_models import BIGRAM_ID, GPT_BLOCK_SIZE, GPT_ID

pytestmark = pytest.mark.anyio

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"
PROMPT = "ROMEO:\nBut soft, what light"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def shipped(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncTestClient]:
    """The app serving the three shipped checkpoints (decode step not compiled: not used)."""
    root = tmp_path_factory.mktemp("shipped") / "checkpoints"
    root.mkdir()
    for name in ("bigram-char", "gpt-char", "gpt-bpe"):
        (root / name).symlink_to(SHIPPED / name, target_is_directory=True)
    settings = Settings(checkpoints=str(root), device="cpu", compile_decode=False)
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


@pytest.fixture
async def tiny(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    """The app serving the tiny models (the GPT's context: 16 tokens), with prompts and
    texts of at most 200 characters (decode step not compiled: not used)."""
    limited = msgspec.structs.replace(settings, max_prompt_chars=200, compile_decode=False)
    async with AsyncTestClient(app=create_app(limited)) as client:
        yield client


def loaded(client: AsyncTestClient, model_id: str):
    return client.app.state.registry.get(model_id)


async def next_token(client: AsyncTestClient, **body: object) -> NextTokenResponse:
    return await call(client, "/v1/next-token", NextTokenResponse, **body)


# -- attention ----------------------------------------------------------------------------


async def test_attention_rows_are_causal_distributions(shipped):
    result = await call(shipped, "/v1/attention", AttentionResponse, model="gpt-char", text=PROMPT)
    tokens = await call(shipped, "/v1/tokenize", TokenizeResponse, model="gpt-char", text=PROMPT)
    assert (result.tokens, result.ids, result.skipped_tokens) == (tokens.tokens, tokens.ids, 0)
    weights = torch.tensor([layer.heads for layer in result.layers], dtype=torch.float64)
    T = len(tokens.ids)
    assert weights.shape == (result.n_layer, result.n_head, T, T) == (4, 4, T, T)
    assert [layer.layer for layer in result.layers] == [0, 1, 2, 3]
    above = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert torch.all(weights[..., above] == 0)  # no position reads a later one
    assert torch.all(weights[..., ~above] > 0)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(4, 4, T, dtype=torch.float64), atol=1e-5)


async def test_attention_weights_are_the_models_own(shipped):
    """Averaging the values with the weights served gives each block's attention output."""
    result = await call(shipped, "/v1/attention", AttentionResponse, model="gpt-char", text=PROMPT)
    gpt = loaded(shipped, "gpt-char").model
    with torch.no_grad():
        idx = torch.tensor([result.ids])
        x = gpt.embed(idx, torch.arange(len(result.ids)))
        for block, layer in zip(gpt.transformer.h, result.layers, strict=True):
            attn, h = block.attn, block.ln_1(x)
            _, _, v = attn.split_heads(h)  # (1, nh, T, hs)
            served = torch.tensor([layer.heads])  # (1, nh, T, T)
            assert torch.allclose(attn.merge_heads(served @ v), attn(h), atol=1e-5)
            x = block(x)


async def test_a_long_text_is_read_from_its_last_block_size_tokens(tiny):
    text = "the quick brown fox jumps over it"
    tail = text[-GPT_BLOCK_SIZE:]
    whole = await call(tiny, "/v1/attention", AttentionResponse, model=GPT_ID, text=text)
    last = await call(tiny, "/v1/attention", AttentionResponse, model=GPT_ID, text=tail)
    assert whole.skipped_tokens == len(text) - GPT_BLOCK_SIZE and last.skipped_tokens == 0
    assert whole.tokens == list(tail) and whole.layers == last.layers


async def test_an_empty_text_is_the_start_token(tiny):
    result = await call(tiny, "/v1/attention", AttentionResponse, model=GPT_ID, text="")
    assert result.ids == [loaded(tiny, GPT_ID).tokenizer.start_id]
    assert [layer.heads for layer in result.layers] == [[[[1.0]], [[1.0]]]]


@pytest.mark.parametrize("path", ["/v1/attention", "/v1/logit-lens"])
async def test_the_bigram_has_no_forward_pass_to_look_inside(tiny, path):
    with pytest.raises(ApiError, match=f"{BIGRAM_ID}' is a bigram, which has no") as caught:
        await call(tiny, path, AttentionResponse, model=BIGRAM_ID, text="the")
    assert caught.value.status == 400 and caught.value.param == "model"


@pytest.mark.parametrize("path", ["/v1/attention", "/v1/logit-lens"])
@pytest.mark.parametrize(
    ("text", "message"),
    [("a" * 201, "201 characters, more than this server's limit of 200"), ("~", "'~'")],
)
async def test_a_text_the_model_cannot_read_is_refused(tiny, path, text, message):
    with pytest.raises(ApiError, match=message) as caught:
        await call(tiny, path, AttentionResponse, model=GPT_ID, text=text)
    assert caught.value.status == 400 and caught.value.param == "text"


# -- the logit lens -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("gpt-char", PROMPT),
        ("gpt-char", ""),
        ("gpt-char", "First Citizen:\n" * 12),  # 180 characters: past the context of 128
        ("gpt-bpe", PROMPT),
    ],
)
async def test_the_lens_output_layer_is_the_next_token_distribution(shipped, model, text):
    lens = await call(
        shipped, "/v1/logit-lens", LogitLensResponse, model=model, text=text, top_k=MAX_LENS_TOP_K
    )
    assert [layer.layer for layer in lens.layers] == list(range(5))  # embeddings + 4 blocks
    assert all(len(layer.predictions) == len(lens.tokens) for layer in lens.layers)
    after = await next_token(shipped, model=model, context=text, top_k=MAX_LENS_TOP_K)
    output = lens.layers[-1].predictions[-1]
    assert [p.id for p in output] == [p.id for p in after.distribution]
    for ours, theirs in zip(output, after.distribution, strict=True):
        assert ours.token == theirs.token
        assert ours.prob == pytest.approx(theirs.prob, abs=1e-6)
        assert ours.logprob == pytest.approx(theirs.logprob, abs=1e-6)


async def test_each_position_predicts_from_the_tokens_up_to_it(shipped):
    lens = await call(
        shipped, "/v1/logit-lens", LogitLensResponse, model="gpt-char", text=PROMPT, top_k=3
    )
    for t in (0, 6, len(PROMPT) - 2):
        after = await next_token(shipped, model="gpt-char", context=PROMPT[: t + 1], top_k=3)
        served = lens.layers[-1].predictions[t]
        assert [p.id for p in served] == [p.id for p in after.distribution]
        assert served[0].prob == pytest.approx(after.distribution[0].prob, abs=1e-6)


async def test_the_lens_embedding_layer_reads_each_token_alone(shipped):
    """Layer 0: the token and position embeddings only, through the final LayerNorm and the
    tied head, computed here from the weights."""
    lens = await call(
        shipped, "/v1/logit-lens", LogitLensResponse, model="gpt-char", text="To be", top_k=4
    )
    gpt = loaded(shipped, "gpt-char").model
    with torch.no_grad():
        for t, token_id in enumerate(lens.ids):
            state = gpt.transformer.wte.weight[token_id] + gpt.transformer.wpe.weight[t]
            logits = gpt.transformer.ln_f(state) @ gpt.transformer.wte.weight.T
            probs = torch.softmax(logits.double(), dim=-1)
            served = lens.layers[0].predictions[t]
            assert [p.id for p in served] == probs.topk(4).indices.tolist()
            for p in served:
                assert p.prob == pytest.approx(float(probs[p.id]), abs=1e-6)


@pytest.mark.parametrize("top_k", [0, MAX_LENS_TOP_K + 1])
async def test_the_lens_top_k_is_bounded(tiny, top_k):
    with pytest.raises(ApiError, match="top_k") as caught:
        await call(tiny, "/v1/logit-lens", LogitLensResponse, model=GPT_ID, text="ab", top_k=top_k)
    assert caught.value.status == 400


async def test_a_long_text_gets_a_lens_of_its_last_block_size_tokens(tiny):
    text = "the quick brown fox jumps over it"
    lens = await call(tiny, "/v1/logit-lens", LogitLensResponse, model=GPT_ID, text=text, top_k=2)
    assert lens.skipped_tokens == len(text) - GPT_BLOCK_SIZE
    assert lens.tokens == list(text[-GPT_BLOCK_SIZE:])
    assert [len(layer.predictions) for layer in lens.layers] == [GPT_BLOCK_SIZE] * 2
    assert all(len(position) == 2 for layer in lens.layers for position in layer.predictions)


# -- bounded responses ---------------------------------------------------------------------


@pytest.fixture
async def deep(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    """The app serving an untrained GPT of 8 layers x 8 heads and a context of 512 tokens:
    whole-context responses would pass their bounds."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=27, block_size=512, n_layer=8, n_head=8, n_embd=64)
    tokenizer = CharTokenizer(list(" abcdefghijklmnopqrstuvwxyz"))
    save_checkpoint(tmp_path / "checkpoints" / "deep", GPT(config), tokenizer, metrics={})
    settings = Settings(
        checkpoints=str(tmp_path / "checkpoints"), device="cpu", compile_decode=False
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


async def test_a_model_with_many_heads_reads_fewer_tokens_than_its_context(deep):
    text = "to be or not to be that is the question " * 12  # 480 characters, one token each
    attention = await call(deep, "/v1/attention", AttentionResponse, model="deep", text=text)
    T = len(attention.tokens)
    assert T == 128 and attention.skipped_tokens == len(text) - 128  # 8 x 8 x 128^2 = 2^20
    assert 8 * 8 * T * T <= MAX_ATTENTION_WEIGHTS
    lens = await call(
        deep, "/v1/logit-lens", LogitLensResponse, model="deep", text=text, top_k=MAX_LENS_TOP_K
    )
    assert len(lens.tokens) == MAX_LENS_PREDICTIONS // (9 * MAX_LENS_TOP_K) == 364
    assert lens.tokens == list(text[-364:]) and lens.skipped_tokens == len(text) - 364


async def test_the_new_operations_are_documented_with_their_bounds(tiny):
    schema = (await tiny.get("/docs/openapi.json")).json()
    operations = {
        op["operationId"]: op for path in schema["paths"].values() for op in path.values()
    }
    for name in ("attention", "logitLens"):
        assert operations[name].get("description"), name
        assert {"400", "404", "413"} <= set(operations[name]["responses"]), name
    top_k = schema["components"]["schemas"]["LogitLensRequest"]["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, MAX_LENS_TOP_K)


# -- neighbours on the shipped models -----------------------------------------------------


async def test_an_analogy_leaves_out_every_spelling_of_its_words(shipped):
    request = dict(model="gpt-bpe", positive=["king", "woman"], negative=["man"], k=5)
    result = await call(shipped, "/v1/neighbours", NeighboursResponse, **request)
    # `man` is a token of its own (a line's first word has no space before it), and so is
    # ` man`, the word inside a line: both are the query's word.
    assert result.excluded == [" king", " woman", "man", " man"]
    assert not set(result.excluded) & {n.token for n in result.neighbours}
    everything = await call(
        shipped, "/v1/neighbours", NeighboursResponse, **request, exclude_query=False
    )
    assert [n.token for n in everything.neighbours][:3] == [" king", " woman", " man"]


# What the README shows: the shipped bigram's nearest characters by Jensen-Shannon distance.
BIGRAM_CHAR_NEIGHBOURS = {
    "a": ["u", "i", "o", "e"],
    "t": ["g", "s", "w", "d"],
    "y": ["d", "f", "s", "r"],
    ".": [":", "?", "!", ";"],
}


@pytest.mark.parametrize(("token", "nearest"), BIGRAM_CHAR_NEIGHBOURS.items())
async def test_the_shipped_bigrams_neighbours_are_those_the_readme_shows(shipped, token, nearest):
    result = await call(
        shipped, "/v1/neighbours", NeighboursResponse, model="bigram-char", token=token, k=4
    )
    assert result.query.metric == "jensen_shannon"
    assert [n.token for n in result.neighbours] == nearest
