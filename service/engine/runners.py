"""The model side of the engine: next-token logits for a batch of sequences held in rows.

Sequence i of the engine's batch always lives in row i. Sequences join at the end, and when
one leaves, the last row moves into its place, so rows 0..n-1 stay packed: a GPT decode step
then reads one contiguous block of the KV cache instead of gathering rows.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sysconfig
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

import torch

from models.bigram import BigramLanguageModel
from models.gpt import GPT
from service.engine.aot import compiled_steps, decode_step_folder

# Attention in a decode step reads the cache up to the longest row, rounded up to a multiple
# of this, so that each row's read is whole vectors; one compiled graph serves every span.
SPAN_STEP = 16


class Runner(Protocol):
    compiled: bool  # the decode step runs compiled

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        """Append one row per context; returns the logits after each context, (k, V)."""
        ...

    def advance(self, token_ids: list[int]) -> torch.Tensor:
        """Feed rows 0..n-1 one token each; returns their next-token logits, (n, V)."""
        ...

    def remove(self, row: int) -> None:
        """Drop a row: the last row moves into its place."""
        ...

    def truncate(self, rows: int) -> None:
        """Keep rows 0..rows-1 and drop the others (those of a failed prefill, or all)."""
        ...

    def warm_up(self) -> str | None:
        """Prepare (compile) before the first request; a decode step that cannot be compiled
        falls back to eager, and warm_up says why (returns the reason), else returns None."""
        ...


def compile_blocker(device: torch.device) -> str | None:
    """Why inductor cannot build the decode step on `device` here, or None when it can. On
    CPU it writes C++ that a compiler builds against torch's and Python's headers (the
    ahead-of-time package); on CUDA it writes Triton kernels. MPS support in inductor is
    still experimental: eager there."""
    if device.type == "cpu":
        if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
            return "no C++ compiler (g++) on PATH"
        if not (Path(torch.__file__).parent / "include" / "torch").is_dir():
            return "this torch install has no C++ headers (torch/include)"
        if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
            return "no Python headers (Python.h; Debian: python3-dev)"
        return None
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    return f"torch.compile is not used on {device.type}"


class GPTRunner:
    """Prefill once, then one token per step against a preallocated KV cache.

    Learned positions stop at block_size, so a row whose cache is full re-prefills its last
    `window_keep - 1` tokens at positions 0.. before taking the new token: the model then
    sees exactly the last `window_keep` tokens, at the positions it would give them in a
    fresh forward pass. Smaller windows re-prefill more often but shorter; `window_keep` =
    block_size re-prefills at every step (a sliding window, like full recompute).
    """

    def __init__(
        self,
        model: GPT,
        capacity: int,
        window_keep: int,
        compile_decode: bool = False,
        dtype: torch.dtype | None = None,
        batch_buckets: bool = False,
    ):
        if not 1 <= window_keep <= model.block_size:
            raise ValueError(f"window_keep must be in 1..{model.block_size}, got {window_keep}")
        # A copy in another precision (bf16 on CUDA) decodes; the model's own weights stay as
        # they are for whatever else reads them (the inspection endpoints).
        if dtype is not None and dtype != model.transformer.wte.weight.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model = model
        self.block_size = model.block_size
        self.window_keep = window_keep
        self.cache = model.new_cache(capacity)
        self.device = self.cache.kv.device
        self.windows: list[list[int]] = []  # per row: the tokens its cache row holds, in order
        # Batch sizes padded up to powers of two: one CUDA graph per size (None: as they come).
        graphs = compile_decode and self.device.type == "cuda"
        self.buckets = batch_sizes(capacity) if graphs or batch_buckets else None
        self.compiled = compile_decode
        # Eager until warm_up builds the compiled step (on CUDA, compiles it at its first calls).
        self.decode: Callable[..., torch.Tensor] = model.decode
        self.prefill_step: Callable[..., torch.Tensor] = model.prefill  # compiled on CPU too
        if self.captured:
            self.decode = self.graphed_decode()

    @property
    def captured(self) -> bool:
        """Whether the decode step runs as CUDA graphs (compiled, on CUDA)."""
        return self.compiled and self.device.type == "cuda"

    def graphed_decode(self) -> Callable[..., torch.Tensor]:
        """The decode step is many small operations, so launch overhead, not arithmetic,
        bounds it. On CUDA it is compiled and captured in CUDA graphs (one per padded batch
        size, see `buckets`), which launch all of its kernels at once, reading the KV cache at
        a fixed address. (On the CPU, warm_up compiles it ahead of time, and the prefill
        too: see service.engine.aot.) Prefill stays eager here: it runs rarely."""
        assert self.buckets is not None  # a compiled step on CUDA pads to them
        torch._dynamo.mark_static_address(self.cache.kv)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(self.buckets))
        step = partial(self.model.decode, explicit_attention=True)
        return torch.compile(step, mode="reduce-overhead", dynamic=False)

    def fit(self, tokens: list[int]) -> list[int]:
        """The window of `tokens` the model attends to: all of them while they fit in
        block_size, else the last `window_keep`."""
        return tokens if len(tokens) <= self.block_size else tokens[-self.window_keep :]

    def prefill(self, rows: list[int]) -> torch.Tensor:
        """(Re)fill the cache rows `rows` from their windows; returns their logits (k, V)."""
        by_length: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            by_length[len(self.windows[row])].append(row)
        logits = {}
        # Windows of one length share one forward pass.
        for group in by_length.values():
            idx = torch.tensor([self.windows[r] for r in group], device=self.device)  # (g, T)
            slots = torch.tensor(group, device=self.device)
            for row, row_logits in zip(
                group, self.prefill_step(idx, self.cache, slots), strict=True
            ):
                logits[row] = row_logits
        return torch.stack([logits[r] for r in rows]).float()

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        first = len(self.windows)
        self.windows.extend(self.fit(list(c)) for c in contexts)
        return self.prefill(list(range(first, len(self.windows))))

    def advance(self, token_ids: list[int]) -> torch.Tensor:
        full = [row for row, w in enumerate(self.windows) if len(w) == self.block_size]
        if full:
            for row in full:
                # keep window_keep - 1 tokens: the incoming one makes window_keep
                self.windows[row] = self.windows[row][
                    len(self.windows[row]) - self.window_keep + 1 :
                ]
            refill = [row for row in full if self.windows[row]]  # empty when window_keep is 1
            if refill:
                self.prefill(refill)
        n = len(token_ids)
        lengths = [len(w) for w in self.windows]
        span: int | None = self.span(max(lengths))
        padding: list[int] = []
        if self.buckets is not None:
            # Rows n.. are free: the padding's keys and values land there, unread, and a
            # prefill overwrites them when a sequence joins. The whole block is read.
            padding = [0] * (next(b for b in self.buckets if b >= n) - n)
            span = None
        positions = torch.tensor([*lengths, *padding], device=self.device)
        tokens = torch.tensor([*token_ids, *padding], device=self.device)
        if self.captured:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are done with
        logits = self.decode(tokens, self.cache, positions, span=span)  # (n + padding, V)
        for window, token in zip(self.windows, token_ids, strict=True):
            window.append(token)
        if padding:
            logits = logits[:n]
        # a copy from a CUDA graph, whose outputs its next replay overwrites
        return logits.to(torch.float32, copy=self.captured)  # (n, V)

    def span(self, longest: int) -> int:
        """The cache positions a step reads when the longest row holds `longest` tokens: its
        new position included, rounded up to a multiple of SPAN_STEP. (Padded batches read
        the whole block instead: every span would be another CUDA graph per batch size, and
        on a GPU that read is cheap next to the launches the graphs save.)"""
        return min(self.block_size, (longest // SPAN_STEP + 1) * SPAN_STEP)

    def warm_up(self) -> str | None:
        """Compile the decode step now, not while the first requests wait: on the CPU, load
        or build its ahead-of-time packages (the prefill's too); on CUDA, record a graph per
        padded batch size. Then run it for one row and for two, each at two spans, and a
        prefill of one token (rows 0 and 1 are free at this point and get overwritten). If
        they do not compile, decoding goes on eagerly and the reason is returned."""
        try:
            if self.compiled and not self.captured:
                steps = compiled_steps(self.model, self.cache, decode_step_folder())
                self.decode, self.prefill_step = steps.decode, steps.prefill
            self.run_warm_up_shapes()
        except Exception as err:
            if not self.compiled:
                raise
            self.compiled = False
            self.decode, self.prefill_step = self.model.decode, self.model.prefill
            self.run_warm_up_shapes()
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            return (
                f"could not compile the decode step ({reason}); decoding eagerly. On CPU "
                "inductor needs a working C++ compiler (g++) and torch's and Python's headers"
            )
        return None

    def run_warm_up_shapes(self) -> None:
        first = torch.zeros(1, dtype=torch.long, device=self.device)
        self.prefill_step(first[:, None], self.cache, first)
        shapes: list[tuple[int, int | None]]
        if self.buckets is not None:
            # each size three times: CUDA graph trees run a graph once before recording it
            shapes = [(n, None) for n in self.buckets for _ in range(3)]
        else:
            spans = sorted({self.span(0), self.span(self.block_size - 1)})
            shapes = [(n, s) for n in range(1, min(2, self.cache.max_slots) + 1) for s in spans]
        for n, span in shapes:
            tokens = torch.zeros(n, dtype=torch.long, device=self.device)
            positions = torch.zeros(n, dtype=torch.long, device=self.device)  # not `tokens`:
            if self.captured:
                torch.compiler.cudagraph_mark_step_begin()
            self.decode(tokens, self.cache, positions, span=span)  # a graph would assume it

    def truncate(self, rows: int) -> None:
        del self.windows[rows:]

    def remove(self, row: int) -> None:
        last = len(self.windows) - 1
        if row != last:
            self.cache.move(last, row)
            self.windows[row] = self.windows[last]
        self.windows.pop()


class BigramRunner:
    """No cache: the next token depends on the last one only, so every step is one row
    lookup per sequence in the probability table."""

    compiled = False

    def __init__(self, model: BigramLanguageModel):
        self.log_table = model.probability_table().log()  # (V, V), row i: log P(. | i)
        self.device = self.log_table.device

    def lookup(self, token_ids: list[int]) -> torch.Tensor:
        return self.log_table[torch.tensor(token_ids, device=self.device)]

    def start(self, contexts: list[list[int]]) -> torch.Tensor:
        return self.lookup([c[-1] for c in contexts])

    def advance(self, token_ids: list[int]) -> torch.Tensor:
        return self.lookup(token_ids)

    def warm_up(self) -> str | None:
        """Nothing to prepare."""
        return None

    def truncate(self, rows: int) -> None:
        """Rows hold no state of their own."""

    def remove(self, row: int) -> None:
        """Rows hold no state of their own."""


def batch_sizes(capacity: int) -> list[int]:
    """Powers of two below `capacity`, then `capacity`: the sizes a padded batch takes."""
    sizes = [1 << i for i in range(capacity.bit_length()) if 1 << i < capacity]
    return [*sizes, capacity]


def make_runner(
    model: GPT | BigramLanguageModel,
    capacity: int,
    window_keep: int | None = None,
    compile_decode: bool = False,
    dtype: torch.dtype | None = None,
) -> Runner:
    """The runner for `model`; `window_keep` defaults to half the GPT's block_size, `dtype`
    (the GPT's decode precision) to the model's own."""
    if isinstance(model, GPT):
        keep = window_keep if window_keep is not None else max(1, model.block_size // 2)
        return GPTRunner(model, capacity, keep, compile_decode, dtype)
    if isinstance(model, BigramLanguageModel):
        return BigramRunner(model)
    raise TypeError(f"no engine runner for {type(model).__name__}")
