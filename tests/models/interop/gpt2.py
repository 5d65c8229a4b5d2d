"""A GPT-2 folder made here by transformers itself, for the import tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from models.tokenizer import BPETokenizer
from tests.conftest import corpus_text


def gpt2_folder(path: Path) -> GPT2LMHeadModel:
    """A small GPT-2 made the way OpenAI's are (tanh GELU, byte-level BPE with
    <|endoftext|> as bos and eos), saved by transformers itself."""
    bpe = BPETokenizer.train(corpus_text(20_000), 300).hf
    bpe.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    end = bpe.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(), n_positions=48, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", bos_token_id=end, eos_token_id=end,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    ).save_pretrained(path)
    return model
