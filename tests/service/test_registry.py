"""The registry on its own: loading, and the model work behind every endpoint."""

import logging

import pytest
import torch

from models.checkpoint import load_checkpoint
from service.engine.runners import compile_blocker
from service.exceptions import (
    InvalidRequestError,
    NoModelsLoadedError,
    NotReadyError,
    UnknownModelError,
)
from service.registry import ModelRegistry, decode_dtype, decode_path
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
        Settings(
            checkpoints=str(folder_with_a_broken_checkpoint), device="cpu", compile_decode=False
        )
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
        Settings(
            checkpoints=str(folder_with_a_broken_checkpoint), device="cpu", compile_decode=False
        )
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
        registry.get(BIGRAM_ID)


async def test_unknown_model_names_the_available_ones(registry):
    with pytest.raises(UnknownModelError, match="bigram-tiny, gpt-tiny") as caught:
        registry.get("gpt-huge")
    assert caught.value.param == "model"


async def test_a_character_outside_the_vocabulary_is_named(registry):
    with pytest.raises(InvalidRequestError, match="'~' at position 2") as caught:
        registry.get(GPT_ID).prompt_ids("ab~")
    assert caught.value.param == "prompt"


def test_the_decode_step_is_compiled_only_where_a_compiler_and_headers_are(
    monkeypatch: pytest.MonkeyPatch,
):
    cpu = torch.device("cpu")
    assert compile_blocker(cpu) is None  # this machine has g++ and torch's headers
    monkeypatch.setenv("PATH", "/nonexistent")
    assert compile_blocker(cpu) == "no C++ compiler (g++) on PATH"
    assert decode_path(Settings(), cpu) == (
        False,
        "eager (no C++ compiler (g++) on PATH; compiled decoding measured 1.6-3.7x faster)",
    )
    assert decode_path(Settings(compile_decode=False), cpu) == (False, "eager, as set")


def test_decoding_is_bf16_by_default_only_on_a_cuda_device_that_has_it(
    monkeypatch: pytest.MonkeyPatch,
):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decode_dtype(Settings(), cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert decode_dtype(Settings(), cuda) == torch.bfloat16
    assert decode_dtype(Settings(decode_dtype="float32"), cuda) == torch.float32
    assert decode_dtype(Settings(decode_dtype="bfloat16"), cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert decode_dtype(Settings(), cuda) == torch.float32


async def test_engines_get_the_decode_precision_decided_at_load(registry):
    assert registry.decode_dtype == torch.float32  # this machine has no CUDA
    assert registry.engine_config().dtype == torch.float32


def test_engines_hand_over_streamed_tokens_at_the_stream_interval_set():
    from_env = Settings.from_env(environ={"TINYGPT_STREAM_INTERVAL": "0"})
    assert ModelRegistry(from_env).engine_config().stream_interval == 0.0
    assert ModelRegistry(Settings()).engine_config().stream_interval == 0.01
