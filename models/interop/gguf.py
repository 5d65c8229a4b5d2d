"""GGUF, the file llama.cpp (`llama-cli`, `llama-server`) and Ollama run: a GPT checkpoint as
llama.cpp's `gpt2` architecture, F32 or F16.

ggml stores a linear layer's weight as {in, out}, which is PyTorch's nn.Linear (out, in)
tensor as it is: nothing is transposed. Without an `output.weight` llama.cpp's head reuses
the token embeddings, which is our tying. llama.cpp's GPT-2 computes the tanh-approximated
GELU whatever the model was trained with; for exact-GELU models the logits differ by about
1e-3, which has not changed a greedy token in our checks.

The tokenizer is llama.cpp's `gpt2` (byte-level BPE): tokens are written in GPT-2's
byte-to-unicode alphabet, and a character vocabulary becomes a BPE without merges, except
those that put a multi-byte UTF-8 character back together from its bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from gguf import GGUFWriter, LlamaFileType, TokenType

from models.checkpoint import Checkpoint
from models.gpt import GPT
from models.interop.hf import LAYER_NORM_EPS, exportable_gpt, special_token_ids
from models.interop.tokens import byte_level, token_bytes
from models.tokenizer import BPETokenizer, CharTokenizer, TextTokenizer

GGUFType = Literal["f32", "f16"]
FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16}
# The gguf writer refuses an empty merges list: a character vocabulary of one-byte characters
# gets this one, made of characters outside GPT-2's byte alphabet, so it never applies.
NEVER_APPLIES = "\u2400 \u2400"
# Our tensor names, after "transformer.h.N.", and llama.cpp's after "blk.N.".
BLOCK_TENSORS = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


def char_merges(tokenizer: CharTokenizer) -> list[str]:
    """Merges that rebuild each multi-byte character of the vocabulary from its bytes, left
    to right. UTF-8 is self-synchronising: the bytes of one character's prefix never stand
    next to each other anywhere but inside that character, so no merge crosses characters."""
    merges: dict[str, None] = {}  # ordered and unique
    for ch in tokenizer.chars:
        symbols = [byte_level(bytes([b])) for b in ch.encode("utf-8")]
        for i in range(1, len(symbols)):
            merges[f"{''.join(symbols[:i])} {symbols[i]}"] = None
    return list(merges) or [NEVER_APPLIES]


def bpe_merges(tokenizer: BPETokenizer) -> list[str]:
    """The merges of the BPE model in llama.cpp's "left right" form."""
    merges = json.loads(tokenizer.hf.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def token_list(tokenizer: TextTokenizer) -> tuple[list[str], list[TokenType]]:
    """Every token in id order, in byte-level spelling, and its llama.cpp token type. A
    special token (GPT-2's end of text) is spelled as its text, which llama.cpp matches."""
    special = {}
    if isinstance(tokenizer, BPETokenizer):
        added = tokenizer.hf.get_added_tokens_decoder()
        special = {i: token.content for i, token in added.items() if token.special}
    tokens = [
        special.get(i) or byte_level(token_bytes(tokenizer, i)) for i in range(tokenizer.vocab_size)
    ]
    types = [TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(len(tokens))]
    return tokens, types


def gguf_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's names; zeros for the biases of a `--no-bias` model,
    which llama.cpp's GPT-2 requires."""
    config = model.config
    ours = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    wte = ours["transformer.wte.weight"]
    tensors = {
        "token_embd.weight": wte * math.sqrt(config.n_embd) if config.scale_embeddings else wte,
        "position_embd.weight": ours["transformer.wpe.weight"],
    }
    if config.scale_embeddings:  # the head then reads the unscaled table
        tensors["output.weight"] = wte
    layers = [
        (f"transformer.h.{i}.{a}", f"blk.{i}.{b}")
        for i in range(config.n_layer)
        for a, b in BLOCK_TENSORS.items()
    ]
    for source, target in [*layers, ("transformer.ln_f", "output_norm")]:
        weight = ours[f"{source}.weight"]
        tensors[f"{target}.weight"] = weight
        bias = ours.get(f"{source}.bias")
        tensors[f"{target}.bias"] = bias if bias is not None else torch.zeros(weight.size(0))
    return tensors


def export_gguf(checkpoint: Checkpoint, out: Path, file_type: GGUFType = "f32") -> Path:
    """Write `checkpoint` (a GPT) as the GGUF file `out`. F16 stores the matrices in half
    precision and keeps the norms and biases in F32, as llama.cpp's own converter does."""
    model = exportable_gpt(checkpoint, "GGUF")
    config, tokenizer = model.config, checkpoint.tokenizer
    writer = GGUFWriter(out, arch="gpt2")
    writer.add_name(checkpoint.path.name)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_file_type(FILE_TYPES[file_type])

    tokens, types = token_list(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = (
        bpe_merges(tokenizer) if isinstance(tokenizer, BPETokenizer) else char_merges(tokenizer)
    )
    writer.add_token_merges(merges)
    bos, eos = special_token_ids(tokenizer)
    writer.add_bos_token_id(bos)
    # llama.cpp needs an end token and, without one, would take token 11. Our vocabularies
    # have none: the newline stands in, so llama.cpp stops at a line's end (see README).
    writer.add_eos_token_id(bos if eos is None else eos)
    writer.add_add_bos_token(False)

    for name, tensor in gguf_tensors(model).items():
        array = tensor.numpy()
        if file_type == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
