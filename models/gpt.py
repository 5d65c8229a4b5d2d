"""A decoder-only Transformer language model in the GPT-2 style, small enough to read at once."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.data import TrainingData

Activation = Literal["gelu", "gelu_tanh"]


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    # Multiply token embeddings by sqrt(n_embd) so they are not drowned by the positions.
    scale_embeddings: bool = False
    # The MLP's GELU: exact, as this project trains, or tanh-approximated, as OpenAI's GPT-2
    # checkpoints were trained (`tinygpt import --from-hf` keeps theirs).
    activation: Activation = "gelu"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise ValueError(f"unknown activation {self.activation!r}; choose gelu or gelu_tanh")


class GPTTrainingSettings(Protocol):
    """The training settings GPT reads (models.config.TrainConfig holds them)."""

    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    bias: bool
    scale_embeddings: bool


class KVCache:
    """Keys and values of every layer for up to `max_slots` sequences, one cache row each.

    One tensor `kv` (n_layer, max_slots, 2, nh, block_size + 1, hs), index 0 of its third
    axis holding keys and 1 values. Allocated once at full size: decoding writes one position
    per step in place and never grows a tensor, and moving a sequence to another row is one
    copy. The last position is never written or read: a decode step reads positions 0..L-1
    for an L of its own (see GPT.decode), and were L ever the whole axis, the slice would be
    the whole tensor, which torch.compile treats as a shape of its own (another graph).
    """

    def __init__(
        self,
        config: GPTConfig,
        max_slots: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        head_dim = config.n_embd // config.n_head
        shape = (config.n_layer, max_slots, 2, config.n_head, config.block_size + 1, head_dim)
        # zeros, not empty: positions past a row's length are masked, but must not hold NaNs
        self.kv = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def max_slots(self) -> int:
        return self.kv.size(1)

    def store_prefix(
        self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Keys and values k, v (B, nh, T, hs) of sequences starting at position 0 into
        positions 0..T-1 of cache rows `slots` (B,). One indexed write into the whole tensor,
        as in store_step: compiled, writes into views of it copied the entire cache (a
        one-token prefill of gpt-char took 86 ms instead of 0.6)."""
        B, _, T, _ = k.shape
        rows = slots[:, None].expand(B, T)
        positions = torch.arange(T, device=k.device)[None, :].expand(B, T)
        kv = torch.stack((k, v), dim=1).permute(0, 3, 1, 2, 4)  # (B, T, 2, nh, hs)
        self.kv[torch.full_like(rows, layer), rows, :, :, positions] = kv

    def store_step(self, layer: int, positions: torch.Tensor, kv: torch.Tensor) -> None:
        """Keys and values kv (B, 2, nh, hs) of one new token per row 0..B-1, at position
        positions[b] of row b.

        One indexed write into the whole tensor rather than into a view of it: under
        torch.compile a write into a view becomes a copy of the entire cache every step.
        """
        rows = torch.arange(kv.size(0), device=kv.device)
        self.kv[torch.full_like(rows, layer), rows, :, :, positions] = kv

    def move(self, source: int, target: int) -> None:
        """Copy the sequence in row `source` into row `target` (all layers)."""
        self.kv[:, target] = self.kv[:, source]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # query, key and value projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))  # 3 x (B, nh, T, hs)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_embd)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        # Under CPU autocast (training in bf16) attention stays fp32: at the shapes trained
        # here the CPU flash kernel's bf16 backward is some 5x slower than its fp32 one
        # (torch 2.13: 3.3 against 0.65 ms at B=12, nh=4, T=64, hs=32).
        fp32_attention = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        if fp32_attention:
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast("cpu", enabled=False) if fp32_attention else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, nh, T, hs)
        return self.merge_heads(y)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The weights (B, nh, T, T) that `forward` gives each position of x over the
        positions up to it, which F.scaled_dot_product_attention computes but does not
        return: softmax(q k^T / sqrt(hs)) with the future masked, so row t is zero past t."""
        q, k, _ = self.split_heads(x)  # 2 x (B, nh, T, hs)
        T = x.size(1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)

    def prefill(
        self, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor
    ) -> torch.Tensor:
        """Causal attention over fresh sequences starting at position 0, whose keys and values
        are also stored at positions 0..T-1 of cache rows `slots` (B,)."""
        q, k, v = self.split_heads(x)  # 3 x (B, nh, T, hs)
        # Nothing earlier to read from the cache: the tokens attend to each other only.
        cache.store_prefix(layer, slots, k, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.merge_heads(y)

    def decode(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        positions: torch.Tensor,
        visible: torch.Tensor,
        explicit_attention: bool = False,
    ) -> torch.Tensor:
        """One new token per sequence, x (B, C): sequence b lives in cache row b and its new
        token sits at positions[b]. `visible` (B, 1, 1, L) marks the cached positions 0..L-1
        each row may attend to: its own prefix, up to and including the new token (L, at most
        block_size, covers every row's new position; positions past it are not read at all).

        `explicit_attention` spells the attention out instead of calling the fused SDPA
        kernel: slower eagerly (more, smaller operations), faster under torch.compile, which
        fuses the softmax and the two products into a few loops."""
        B, C = x.shape
        qkv = self.c_attn(x).view(B, 3, self.n_head, C // self.n_head)  # (B, 3, nh, hs)
        cache.store_step(layer, positions, qkv[:, 1:])  # first: the token attends to itself too
        span = visible.size(-1)
        keys, values = cache.kv[layer, :B, :, :, :span].unbind(1)  # 2 x (B, nh, L, hs)
        q = qkv[:, 0, :, None, :]  # (B, nh, 1, hs)
        # Rows hold sequences of different lengths: the mask, not the shape, bounds each one.
        if explicit_attention:
            scores = (q @ keys.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, 1, L)
            weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
            y = weights @ values  # (B, nh, 1, hs)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self.resid_dropout(self.c_proj(y.view(B, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x

    def prefill(
        self, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn.prefill(self.ln_1(x), cache, layer, slots)
        return x + self.mlp(self.ln_2(x))

    def decode(
        self,
        x: torch.Tensor,
        cache: KVCache,
        layer: int,
        positions: torch.Tensor,
        visible: torch.Tensor,
        explicit_attention: bool = False,
    ) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn.decode(h, cache, layer, positions, visible, explicit_attention)
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.ModuleList):
    """The transformer blocks; an nn.ModuleList that says, to the type checker, what it holds."""

    def __iter__(self) -> Iterator[Block]:
        return cast(Iterator[Block], super().__iter__())


class Transformer(nn.Module):
    """GPT's modules under the names its checkpoints use (transformer.wte, transformer.h.0,
    ...), created in the same order as before; typed attributes where an nn.ModuleDict would
    hide their types from the checker."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = Blocks([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)


@dataclass
class ForwardTrace:
    """What one forward pass computes on its way to the logits (GPT.trace)."""

    # (n_layer + 1, B, T, C): the residual stream after the embeddings, then after each block
    residuals: torch.Tensor
    # (n_layer, B, nh, T, T): each layer's attention weights; row t covers positions 0..t
    attention: torch.Tensor


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reads logits off the token embedding table.
        self.lm_head.weight = self.transformer.wte.weight
        self.init_weights()

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Embeddings last: the tied lm_head shares wte's tensor, and N(0, 0.02) must win.
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # Each block adds two projections to the residual stream; scaling them keeps the
        # stream's variance from growing with depth (GPT-2).
        with torch.no_grad():
            for block in self.transformer.h:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight.mul_(1.0 / math.sqrt(2 * self.config.n_layer))

    def num_parameters(self) -> int:
        """Parameters counted once (the tied lm_head shares the token embedding)."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        if self.config.scale_embeddings:
            tok_emb = tok_emb * math.sqrt(self.config.n_embd)
        return self.transformer.drop(tok_emb + self.transformer.wpe(positions))

    def check_length(self, T: int) -> None:
        """Refuse a sequence longer than the context: positions past it have no embedding."""
        if self.config.block_size < T:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final layer's normalised states (B, T, C): what the head reads at each position."""
        _, T = idx.shape
        self.check_length(T)
        x = self.embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def trace(self, idx: torch.Tensor) -> ForwardTrace:
        """The pass of `hidden_states`, keeping what it otherwise throws away: the residual
        stream at every depth and each block's attention weights (for inspection, not speed:
        the weights are computed a second time, spelled out, beside the fused kernel)."""
        _, T = idx.shape
        self.check_length(T)
        x = self.embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        residuals, attention = [x], []
        for block in self.transformer.h:
            attention.append(block.attn.attention_weights(block.ln_1(x)))  # (B, nh, T, T)
            x = block(x)
            residuals.append(x)
        return ForwardTrace(residuals=torch.stack(residuals), attention=torch.stack(attention))

    def read_out(self, states: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of residual-stream states (..., C), through the final
        LayerNorm and the tied head: of the last block's output, exactly `forward`'s logits;
        of an earlier depth's, what the logit lens shows."""
        return self.lm_head(self.transformer.ln_f(states))

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        return logits, loss

    def token_vectors(self) -> torch.Tensor:
        return self.transformer.wte.weight

    def new_cache(self, max_slots: int) -> KVCache:
        """An empty KV cache for `max_slots` sequences, on the model's device and dtype."""
        weight = self.transformer.wte.weight
        return KVCache(self.config, max_slots, device=weight.device, dtype=weight.dtype)

    def prefill(self, idx: torch.Tensor, cache: KVCache, slots: torch.Tensor) -> torch.Tensor:
        """Start B sequences of T tokens each (positions 0..T-1) in cache rows `slots`.

        idx (B, T) long, slots (B,) long. Returns the logits after each sequence's last
        token, (B, V): exactly what `forward` gives at that position.
        """
        _, T = idx.shape
        self.check_length(T)
        x = self.embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block.prefill(x, cache, layer, slots)
        # Only the last position's logits are needed to choose the next token.
        return self.lm_head(self.transformer.ln_f(x[:, -1]))  # (B, V)

    def decode(
        self,
        idx: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor,
        explicit_attention: bool = False,
        span: int | None = None,
    ) -> torch.Tensor:
        """Advance the sequences in cache rows 0..B-1 by one token each.

        idx (B,) long: each row's newest token; positions (B,) long: where it goes, i.e. how
        many tokens the row already holds, which must be below block_size (the caller
        re-prefills a shorter window first). Returns next-token logits (B, V).
        `span`: how many cache positions attention reads, more than every position (None:
        block_size). Reading the cache is most of a batched step's memory traffic, so the
        caller passes the longest row's length, rounded up a little (to whole vectors).
        `explicit_attention`: see CausalSelfAttention.decode.
        """
        x = self.embed(idx, positions)  # (B, C): one token per row, no time axis
        slot_positions = torch.arange(span or self.config.block_size, device=idx.device)
        visible = (slot_positions <= positions[:, None])[:, None, None, :]  # (B, 1, 1, L)
        for layer, block in enumerate(self.transformer.h):
            x = block.decode(x, cache, layer, positions, visible, explicit_attention)
        return self.lm_head(self.transformer.ln_f(x))  # (B, V)

    # The hooks through which the trainer (models.train), which knows no particular model,
    # trains this one: the bigram has the same methods.

    @classmethod
    def for_training(
        cls, settings: GPTTrainingSettings, vocab_size: int, data: TrainingData
    ) -> GPT:
        """A freshly initialised GPT of the shape `settings` gives; the data plays no part."""
        return cls(
            GPTConfig(
                vocab_size=vocab_size,
                block_size=settings.block_size,
                n_layer=settings.n_layer,
                n_head=settings.n_head,
                n_embd=settings.n_embd,
                dropout=settings.dropout,
                bias=settings.bias,
                scale_embeddings=settings.scale_embeddings,
            )
        )

    def training_objective(
        self, loss: torch.Tensor, settings: object, train_tokens: int
    ) -> torch.Tensor:
        """The cross-entropy alone."""
        return loss

    @torch.no_grad()
    def next_token_distributions(self, probe: torch.Tensor) -> torch.Tensor:
        """What drift is measured on: the predictions at every position of the fixed batch
        `probe`, as (N, V) rows that each sum to 1."""
        logits, _ = self(probe)
        return torch.softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1)).cpu()

    def training_diagnostics(self, data: TrainingData) -> dict[str, float]:
        """Nothing beyond the losses and drift."""
        return {}

    def final_diagnostics(
        self, data: TrainingData, val_loss: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Nothing beyond the losses."""
        return {}, {}

    def manifest_extras(self, data: TrainingData) -> dict[str, Any]:
        """Nothing beyond the weights and settings."""
        return {}

    @torch.no_grad()
    def timeline_snapshot(
        self, data: TrainingData, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """What the training timeline (models.timeline) records: the embedding rows of
        `token_ids` (K, n_embd), which the tied head also reads its logits off."""
        return self.transformer.wte.weight.detach().float().cpu()[token_ids], {}
