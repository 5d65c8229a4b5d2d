"""The shipped subword model through the registry: words in, decoded token text out."""

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.engine import GenerationRequest
from service.exceptions import InvalidRequestError
from service.inspection import Inspector
from service.registry import ModelRegistry
from service.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "gpt-bpe"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def registry(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelRegistry]:
    root = tmp_path_factory.mktemp("bpe") / "checkpoints"
    shutil.copytree(SHIPPED, root / "gpt-bpe")
    registry = ModelRegistry(Settings(checkpoints=str(root), device="cpu", compile_decode=False))
    await registry.load()
    yield registry
    await registry.unload()


async def test_a_bare_word_finds_its_spaced_token(registry):
    model = registry.get("gpt-bpe")
    king = model.token_id("king", "token")
    neighbours = await Inspector(registry.settings).neighbours(
        model, [king], [], "cosine", 5, excluded=[king]
    )
    tokens = [n.token for n in neighbours]
    assert " king" not in tokens and len(tokens) == 5
    assert all(t.startswith(" ") for t in tokens), tokens  # whole words, shown decoded


async def test_a_string_of_several_tokens_is_refused_clearly(registry):
    with pytest.raises(InvalidRequestError, match="exactly one token.*is 4 tokens"):
        registry.get("gpt-bpe").token_id("kingdom of", "token")


async def test_tokens_are_shown_as_their_text(registry):
    model = registry.get("gpt-bpe")
    ids = model.encode("ROMEO: I love thee", "text")
    tokens = [model.tokenizer.token_text(i) for i in ids]
    assert "".join(tokens) == "ROMEO: I love thee"
    assert " love" in tokens and len(ids) < len("ROMEO: I love thee")


async def test_next_token_and_generate_work_with_any_text(registry):
    # Byte-level: characters no training text had still encode.
    context = "Juliet ♥"
    model = registry.get("gpt-bpe")
    inspector = Inspector(registry.settings)
    distribution, _ = await inspector.next_token(model, model.prompt_ids(context), 1.0, 3)
    assert len(distribution) == 3
    request = GenerationRequest(model.prompt_ids("ROMEO:"), max_new_tokens=20, seed=3)
    generated = await model.engine.submit(request).collect()
    assert generated.usage.completion_tokens == 20 and generated.text
