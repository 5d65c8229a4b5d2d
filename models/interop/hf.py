"""Hugging Face `transformers`: export a GPT checkpoint as a GPT-2 folder, import one back.

This project's GPT is GPT-2's architecture under the same module names (pre-LayerNorm blocks,
learned positions, a head tied to the token embeddings, LayerNorm eps 1e-5). Two differences
remain: GPT-2 stores its four projection matrices as `Conv1D` weights, (in, out), where ours
are `nn.Linear`'s (out, in); and GPT-2 always has biases, so a model trained with `--no-bias`
exports zeros for them. A model with `--scale-embeddings` exports an untied head: the input
embeddings pre-multiplied by sqrt(n_embd), the head as it is.

The exported tokenizer is `tokenizer.json` for `tokenizers`: a BPE vocabulary as it is, and a
character vocabulary as a BPE model without merges (each character one token, in our order)
whose decoder joins tokens without spaces. `tokenizers` cannot refuse text, so where this
project rejects a character outside the vocabulary, the exported tokenizer drops it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from models.checkpoint import Checkpoint, save_checkpoint
from models.gpt import GPT, Activation, GPTConfig
from models.interop import InteropError
from models.interop.tokens import is_byte_level
from models.tokenizer import BPETokenizer, CharTokenizer, TextTokenizer

# Weights that GPT-2's Conv1D keeps as (in, out), the transpose of nn.Linear's (out, in).
CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# GPT-2's name for each of our activations, and every name of theirs that we can run exactly.
ACTIVATION_NAMES: dict[Activation, str] = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
ACTIVATIONS_READ: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
# Our GPTConfig's shape fields and GPT2Config's names for them.
SHAPE_NAMES = {
    "vocab_size": "vocab_size",
    "block_size": "n_positions",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "n_embd",
}
END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token, where a vocabulary has it
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's, which our GPT uses


def exportable_gpt(checkpoint: Checkpoint, target: str) -> GPT:
    if not isinstance(checkpoint.model, GPT):
        raise InteropError(
            f"checkpoint {checkpoint.path} is a {checkpoint.kind} model, which has no {target} "
            "counterpart (its table is not a Transformer); --format word2vec exports its "
            "token vectors"
        )
    return checkpoint.model


def special_token_ids(tokenizer: TextTokenizer) -> tuple[int, int | None]:
    """(bos, eos). A vocabulary with GPT-2's end-of-text token uses it for both, as GPT-2 does.
    Ours have none, since a plain-text corpus marks no ends: generation runs to its length, as
    `tinygpt serve`'s does, and bos is the token an empty prompt starts from (the newline)."""
    if isinstance(tokenizer, BPETokenizer):
        end = tokenizer.hf.token_to_id(END_OF_TEXT)
        if end is not None:
            return end, end
    return tokenizer.start_id, None


def gpt2_config(model: GPT, tokenizer: TextTokenizer) -> GPT2Config:
    config = model.config
    bos, eos = special_token_ids(tokenizer)
    gpt2 = GPT2Config(
        **{theirs: getattr(config, ours) for ours, theirs in SHAPE_NAMES.items()},
        activation_function=ACTIVATION_NAMES[config.activation],
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=not config.scale_embeddings,
        architectures=["GPT2LMHeadModel"],
    )
    gpt2.n_ctx = config.block_size  # older readers of GPT-2 configs take the context from here
    return gpt2


def gpt2_weights(model: GPT, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names and layouts, for every tensor in `expected` (a
    GPT2LMHeadModel's state dict): zeros for the biases a `--no-bias` model lacks."""
    ours = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    if model.config.scale_embeddings:
        ours["transformer.wte.weight"] = ours["transformer.wte.weight"] * math.sqrt(
            model.config.n_embd
        )
    weights = {}
    for name, like in expected.items():
        if name in ours:
            tensor = ours[name].t() if name.endswith(CONV1D_WEIGHTS) else ours[name]
        elif name.endswith(".bias") and not model.config.bias:
            tensor = torch.zeros_like(like)
        else:
            raise InteropError(f"this GPT has no weight for GPT-2's {name}")
        weights[name] = tensor.contiguous()
    return weights


def char_tokenizer_json(tokenizer: CharTokenizer) -> Tokenizer:
    """Each character one token with our id; unknown characters are dropped (no unk token)."""
    vocab = {ch: i for i, ch in enumerate(tokenizer.chars)}
    hf = Tokenizer(BPE(vocab=vocab, merges=[]))
    hf.decoder = decoders.Fuse()  # concatenate: the default decoder would join with spaces
    return hf


def fast_tokenizer(tokenizer: TextTokenizer, block_size: int) -> PreTrainedTokenizerFast:
    backend = (
        tokenizer.hf if isinstance(tokenizer, BPETokenizer) else char_tokenizer_json(tokenizer)
    )
    ends = {}
    if isinstance(tokenizer, BPETokenizer) and tokenizer.hf.token_to_id(END_OF_TEXT) is not None:
        ends = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=block_size,
        clean_up_tokenization_spaces=False,  # decoded text is exactly ours
        **ends,
    )


def model_card(checkpoint: Checkpoint, model: GPT) -> str:
    """README.md of the exported folder: what the model is, its data's hash, its metrics."""
    manifest, config, tokenizer = checkpoint.manifest, model.config, checkpoint.tokenizer
    metrics = "\n".join(
        f"| `{name}` | {value:.4f} |" if isinstance(value, float) else f"| `{name}` | {value} |"
        for name, value in manifest.get("metrics", {}).items()
    )
    if isinstance(tokenizer, CharTokenizer):
        tokens = (
            f"{tokenizer.vocab_size} characters, one token each; a character outside the "
            "vocabulary is dropped (the `tinygpt` tokenizer refuses such text), and any other "
            "text encodes to the ids `tinygpt` gives"
        )
    else:
        tokens = f"byte-level BPE of {tokenizer.vocab_size} tokens, the `tinygpt` tokenizer"
    bos, eos = special_token_ids(tokenizer)
    if eos is None:
        ends = (
            f"`bos_token_id` {bos} ({tokenizer.token_text(bos)!r}) and no `eos_token_id`: the "
            "training text marks no ends, so `generate` runs to `max_new_tokens`"
        )
    else:
        ends = f"`bos_token_id` = `eos_token_id` = {bos} (`{END_OF_TEXT}`)"
    digest = manifest.get("data_sha256")
    data = f"sha256 of the training text: `{digest}`" if digest else "not recorded"
    if "data" in manifest.get("training", {}):
        data += f" (`{manifest['training']['data']}`)"
    weights = manifest.get("weights_sha256")
    biases = "trained" if config.bias else "none (exported as zeros)"
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, tinygpt]
---

# {checkpoint.path.name}

A GPT-2-architecture model exported by `tinygpt export --format hf` from the `tinygpt`
checkpoint `{checkpoint.path.name}` (weights sha256 `{weights}`).

| setting | value |
| --- | --- |
| layers, heads, embedding size | {config.n_layer}, {config.n_head}, {config.n_embd} |
| context (`n_positions`) | {config.block_size} tokens |
| parameters | {model.num_parameters():,} |
| activation | {ACTIVATION_NAMES[config.activation]} |
| biases | {biases} |
| tokenizer | {tokens} |
| special tokens | {ends} |
| training data | {data} |

## Metrics

| metric | value |
| --- | --- |
{metrics or "| (none recorded) | |"}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))
```
"""


def export_hf(checkpoint: Checkpoint, out: Path) -> list[Path]:
    """Write `checkpoint` (a GPT) as a `transformers` folder `out`; returns the files."""
    model = exportable_gpt(checkpoint, "transformers")
    hf_model = GPT2LMHeadModel(gpt2_config(model, checkpoint.tokenizer))
    hf_model.load_state_dict(gpt2_weights(model, hf_model.state_dict()))
    hf_model.generation_config.eos_token_id = hf_model.config.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    fast_tokenizer(checkpoint.tokenizer, model.config.block_size).save_pretrained(out)
    (out / "README.md").write_text(model_card(checkpoint, model), encoding="utf-8")
    return sorted(out.iterdir())


# -- import --------------------------------------------------------------------------------


def checked_gpt2_config(source: Path) -> GPT2Config:
    """The folder's config, refused unless it is a GPT-2 that our GPT computes exactly."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise InteropError(f"{source}: not a transformers model folder ({err})") from err
    if config.model_type != "gpt2":
        names = ", ".join(config.architectures or []) or "no architectures listed"
        raise InteropError(
            f"{source}: architecture {config.model_type!r} ({names}) is not GPT-2; "
            "tinygpt imports GPT-2 models (model_type 'gpt2') only"
        )
    problems = []
    if config.activation_function not in ACTIVATIONS_READ:
        problems.append(f"activation_function {config.activation_function!r}")
    if config.n_inner not in (None, 4 * config.n_embd):
        problems.append(f"n_inner {config.n_inner} (tinygpt's MLP is 4 x n_embd)")
    if config.layer_norm_epsilon != LAYER_NORM_EPS:
        problems.append(f"layer_norm_epsilon {config.layer_norm_epsilon}")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        problems.append("attention scaled other than by 1/sqrt(head size)")
    if config.add_cross_attention:
        problems.append("cross-attention")
    if problems:
        raise InteropError(f"{source}: a GPT-2 that tinygpt cannot run: {'; '.join(problems)}")
    return config


def imported_tokenizer(source: Path) -> TextTokenizer:
    """The folder's tokenizer as ours: a BPE-without-merges over single characters (what
    `export_hf` writes for a character vocabulary) is a character tokenizer again."""
    try:
        hf = AutoTokenizer.from_pretrained(source).backend_tokenizer
    except (OSError, ValueError) as err:
        raise InteropError(f"{source}: no tokenizer that transformers can load ({err})") from err
    spec = json.loads(hf.to_str())
    model = spec["model"]
    vocab: dict[str, int] = model.get("vocab", {})
    is_chars = (
        model["type"] == "BPE"
        and not model.get("merges")
        and (spec.get("decoder") or {}).get("type") == "Fuse"
        and spec.get("pre_tokenizer") is None
        and spec.get("normalizer") is None
        and not spec.get("added_tokens")
        and all(len(token) == 1 for token in vocab)
    )
    if is_chars:
        return CharTokenizer(sorted(vocab, key=vocab.__getitem__))
    tokenizer = BPETokenizer(hf)
    if model["type"] != "BPE" or not is_byte_level(tokenizer):
        raise InteropError(
            f"{source}: the tokenizer is {model['type']} with a "
            f"{(spec.get('decoder') or {}).get('type')} decoder; tinygpt reads byte-level BPE "
            "(GPT-2's) and its own character tokenizers"
        )
    return tokenizer


def tied_head(tensors: dict[str, torch.Tensor], n_embd: int) -> bool:
    """Whether the input embeddings are the head's weights (False) or those times sqrt(n_embd)
    (True: `--scale-embeddings`, as `export_hf` writes it); anything else is refused."""
    wte, head = tensors["transformer.wte.weight"], tensors["lm_head.weight"]
    if torch.equal(wte, head):
        return False
    if torch.allclose(wte, head * math.sqrt(n_embd), rtol=1e-6, atol=0.0):
        return True
    raise InteropError(
        "the output head is not tied to the token embeddings; tinygpt's GPT reads its logits "
        "off the token embedding table"
    )


def import_hf(source: Path, out: Path) -> dict[str, Any]:
    """Write the GPT-2 `transformers` folder `source` as a tinygpt checkpoint folder `out`;
    returns its manifest."""
    config = checked_gpt2_config(source)
    tokenizer = imported_tokenizer(source)
    if tokenizer.vocab_size != config.vocab_size:
        raise InteropError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"{config.vocab_size} rows of embeddings; tinygpt needs them equal"
        )
    hf_model = GPT2LMHeadModel.from_pretrained(source, dtype=torch.float32)
    tensors = {name: t.detach() for name, t in hf_model.state_dict().items()}
    biases = [t for name, t in tensors.items() if name.endswith(".bias")]
    ours = GPTConfig(
        **{ours: getattr(config, theirs) for ours, theirs in SHAPE_NAMES.items()},
        dropout=config.resid_pdrop,  # one dropout rate serves all three places in our GPT
        # all-zero biases are what a --no-bias model exports; without them it is the same model
        bias=any(t.any() for t in biases),
        scale_embeddings=tied_head(tensors, config.n_embd),
        activation=ACTIVATIONS_READ[config.activation_function],
    )
    model = GPT(ours)
    weights = {}
    for name in model.state_dict():
        tensor = tensors[name]
        weights[name] = tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
    weights["transformer.wte.weight"] = tensors["lm_head.weight"]
    model.load_state_dict(weights)
    extra = {
        "imported_from": {
            "format": "transformers",
            "path": str(source.resolve()),
            "architectures": config.architectures,
        }
    }
    return save_checkpoint(out, model.eval(), tokenizer, metrics={}, extra=extra)
