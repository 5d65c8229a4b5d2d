"""Generation speed against the engines a user would pick instead, on the same weights.

    python -m bench.peers [--checkpoint checkpoints/gpt-char] [--sequences 1 8 32]
                          [--new-tokens 120] [--threads 1] [--repeats 5]
                          [--out bench/results/peers.json]

In one process, every side continues "ROMEO:\\n" greedily by --new-tokens tokens for n
sequences at once, each n of --sequences, on one set of weights:

- engine, compiled: `service.engine.Engine` eager and with `compile_decode=True`, the n
  requests submitted together, whole results (`stream_tokens=False`), timed from the submit to
  the last completion;
- transformers: `GPT2LMHeadModel.generate` with its KV cache (`use_cache=True`) on the folder
  `models.interop.hf.export_hf` writes, the n sequences as one batch;
- llama.cpp: the F32 GGUF `models.interop.gguf.export_gguf` writes, through llama-cpp-python's
  low-level API: the n sequences (one seq_id each, llama.cpp's own KV cache for n sequences)
  go into one `llama_batch` per step, one `llama_decode` for all of them as llama.cpp's
  batched example does, and the next tokens are the argmax of that step's logits (numpy's,
  over the n rows at once). `n_threads` is --threads.

Every timing includes the prompt's prefill. --threads sets torch's intra-op threads for the
engine and transformers, and llama.cpp's. At each n every side runs once untimed, then the
sides take turns --repeats times, so that all of them see the same machine load; the median
counts. Greedy decoding is deterministic, so every run of every side must give the plain
recompute loop's continuation (`models.sampling.generate`, temperature 0) in every sequence:
a side that does not fails the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
import torch
import transformers
from transformers import GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

from bench.engine import started_engine
from bench.train_reference import machine
from models.checkpoint import Checkpoint, load_checkpoint
from models.gpt import GPT
from models.interop import InteropError
from models.interop.gguf import export_gguf
from models.interop.hf import export_hf
from models.sampling import SamplingParams, generate
from service.engine import Engine, EngineConfig, GenerationRequest

PROMPT = "ROMEO:\n"
GREEDY = SamplingParams(temperature=0.0)
OURS = ("engine", "compiled")
PEERS = ("transformers", "llama.cpp")


@dataclass
class Run:
    seconds: float
    sequences: list[list[int]]  # the new tokens of each sequence


# A side of the comparison: n sequences in, one timed run out.
Side = Callable[[int], Run]


class BenchmarkError(RuntimeError):
    """A side could not run, or did not produce the reference's tokens."""


def engine_side(engine: Engine, prompt_ids: list[int], new_tokens: int) -> Side:
    async def collect(n: int) -> Run:
        request = GenerationRequest(prompt_ids, new_tokens, GREEDY, stream_tokens=False)
        started = time.perf_counter()
        streams = engine.submit_all([request] * n)
        completions = await asyncio.gather(*(stream.collect() for stream in streams))
        seconds = time.perf_counter() - started
        return Run(seconds, [[event.token_id for event in c.tokens] for c in completions])

    return lambda n: asyncio.run(collect(n))


def transformers_side(folder: Path, prompt_ids: list[int], new_tokens: int) -> Side:
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()

    @torch.inference_mode()
    def run(n: int) -> Run:
        ids = torch.tensor([prompt_ids] * n)  # (n, T)
        started = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=model.config.bos_token_id,  # no padding here; silences its warning
        )
        seconds = time.perf_counter() - started
        return Run(seconds, out[:, len(prompt_ids) :].tolist())

    return run


# llama.cpp logs through this callback; the benchmark keeps its stderr for its own lines.
@llama_cpp.llama_log_callback
def _drop_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class LlamaCppBatched:
    """llama.cpp decoding n sequences together with one `llama_decode` per step.

    One context per n, sized for n sequences of `context` tokens each (llama.cpp's default
    KV layout then keeps one stream per sequence); `generate` clears it and starts over."""

    def __init__(self, path: Path, context: int, threads: int):
        llama_cpp.llama_log_set(_drop_llama_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(
            str(path).encode(), llama_cpp.llama_model_default_params()
        )
        if not self.model:
            raise BenchmarkError(f"llama.cpp could not load {path}")
        vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(vocab)
        self.context, self.threads = context, threads
        self.contexts: dict[int, llama_cpp.llama_context_p] = {}
        self.batches: dict[int, llama_cpp.llama_batch] = {}

    def context_for(self, n: int) -> llama_cpp.llama_context_p:
        if n not in self.contexts:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = n * self.context
            params.n_batch = params.n_ubatch = n * self.context  # a whole prefill in one step
            params.n_seq_max = n
            params.n_threads = params.n_threads_batch = self.threads
            ctx = llama_cpp.llama_init_from_model(self.model, params)
            if not ctx:
                raise BenchmarkError(f"llama.cpp could not make a context for {n} sequences")
            self.contexts[n] = ctx
            self.batches[n] = llama_cpp.llama_batch_init(n * self.context, 0, 1)
        return self.contexts[n]

    def decode(self, ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> np.ndarray:
        """Run `batch`; the argmax of every output row's logits, in batch order."""
        if (status := llama_cpp.llama_decode(ctx, batch)) != 0:
            raise BenchmarkError(f"llama_decode failed with status {status}")
        rows = int(np.count_nonzero(np.ctypeslib.as_array(batch.logits, (batch.n_tokens,))))
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), (rows, self.vocab_size))
        return logits.argmax(axis=1)

    def generate(self, prompt_ids: list[int], new_tokens: int, n: int) -> list[list[int]]:
        ctx = self.context_for(n)
        batch = self.batches[n]
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        # numpy views of the batch's arrays, so that a step's n entries are set at once
        cap = n * self.context
        token = np.ctypeslib.as_array(batch.token, (cap,))
        pos = np.ctypeslib.as_array(batch.pos, (cap,))
        n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, (cap,))
        logits = np.ctypeslib.as_array(batch.logits, (cap,))
        n_seq_id[:] = 1
        # Prefill: every sequence's prompt, logits at its last token.
        length = len(prompt_ids)
        batch.n_tokens = n * length
        token[: n * length] = np.tile(prompt_ids, n)
        pos[: n * length] = np.tile(np.arange(length), n)
        logits[: n * length] = 0
        for seq in range(n):
            for i in range(length):
                batch.seq_id[seq * length + i][0] = seq
            logits[seq * length + length - 1] = 1
        next_ids = self.decode(ctx, batch)
        # Then one token per sequence a step: entry i is sequence i.
        for seq in range(n):
            batch.seq_id[seq][0] = seq
        batch.n_tokens = n
        logits[:n] = 1
        out = np.empty((n, new_tokens), dtype=np.int64)
        for step in range(new_tokens):
            out[:, step] = next_ids
            if step == new_tokens - 1:
                break
            token[:n] = next_ids
            pos[:n] = length + step
            next_ids = self.decode(ctx, batch)
        return out.tolist()

    def side(self, prompt_ids: list[int], new_tokens: int) -> Side:
        def run(n: int) -> Run:
            started = time.perf_counter()
            sequences = self.generate(prompt_ids, new_tokens, n)
            return Run(time.perf_counter() - started, sequences)

        return run

    def close(self) -> None:
        for n, ctx in self.contexts.items():
            llama_cpp.llama_batch_free(self.batches[n])
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(self.model)


@dataclass
class Level:
    sequences: int
    speeds: dict[str, list[float]] = field(default_factory=dict)  # tokens/s of each run

    def median(self, side: str) -> float:
        return statistics.median(self.speeds[side])


def checked(name: str, run: Run, reference: list[int], n: int) -> Run:
    """`run`, or BenchmarkError where any of its n sequences is not the reference."""
    if len(run.sequences) != n:
        raise BenchmarkError(f"{name} gave {len(run.sequences)} sequences for {n}")
    for seq, tokens in enumerate(run.sequences):
        if tokens != reference:
            at = next(
                (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b),
                min(len(tokens), len(reference)),
            )
            raise BenchmarkError(
                f"{name}, {n} sequences: sequence {seq} leaves the reference's greedy "
                f"continuation at new token {at} (of {len(reference)}): these are not the "
                "same weights, or the same arithmetic"
            )
    return run


def measure(
    sides: dict[str, Side], levels: list[int], reference: list[int], repeats: int
) -> list[Level]:
    new_tokens = len(reference)
    results = []
    for n in levels:
        level = Level(n, {name: [] for name in sides})
        for name, side in sides.items():  # warm-up, and the first check
            checked(name, side(n), reference, n)
        for _ in range(repeats):
            for name, side in sides.items():
                run = checked(name, side(n), reference, n)
                level.speeds[name].append(n * new_tokens / run.seconds)
        report = ", ".join(f"{name} {level.median(name):,.0f}" for name in sides)
        print(f"  {n} sequences: {report} tok/s (median of {repeats})", flush=True)
        results.append(level)
    return results


def rows(levels: list[Level]) -> list[dict]:
    out = []
    for level in levels:
        row: dict = {"sequences": level.sequences}
        for name in (*OURS, *PEERS):
            row[f"{name}_tokens_per_s"] = round(level.median(name), 1)
            row[f"{name}_runs"] = [round(s, 1) for s in level.speeds[name]]
        for ours in OURS:
            for peer in PEERS:
                row[f"{ours}_over_{peer}"] = round(level.median(ours) / level.median(peer), 2)
        out.append(row)
    return out


def markdown(results: dict) -> str:
    lines = [
        "| sequences | transformers tok/s | llama.cpp tok/s | engine tok/s | compiled tok/s "
        "| engine / transformers | compiled / transformers | engine / llama.cpp "
        "| compiled / llama.cpp |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        speeds = " | ".join(f"{r[f'{name}_tokens_per_s']:,.0f}" for name in (*PEERS, *OURS))
        ratios = " | ".join(f"{r[f'{o}_over_{p}']:.2f}×" for p in PEERS for o in OURS)
        lines.append(f"| {r['sequences']} | {speeds} | {ratios} |")
    m = results["machine"]
    lines += [
        "",
        f"{results['checkpoint']}, {results['new_tokens']} new tokens from {PROMPT!r}, greedy, "
        f"median of {results['repeats']}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"transformers {results['versions']['transformers']}, llama-cpp-python "
        f"{results['versions']['llama_cpp_python']}, {results['threads']} thread(s); load "
        f"average {results['load_average_before'][0]:.1f} before, "
        f"{results['load_average_after'][0]:.1f} after",
    ]
    return "\n".join(lines)


def gpt_checkpoint(path: Path) -> Checkpoint:
    if not (path / "manifest.json").is_file():
        raise BenchmarkError(f"no checkpoint at {path}: --checkpoint takes a checkpoint folder")
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.model, GPT):
        raise BenchmarkError(
            f"{path} is a {checkpoint.kind} model: the peers run GPTs only (--checkpoint)"
        )
    return checkpoint


def run(args: argparse.Namespace) -> dict:
    checkpoint = gpt_checkpoint(args.checkpoint)
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    assert isinstance(model, GPT)  # gpt_checkpoint refuses anything else
    prompt_ids = tokenizer.encode(PROMPT)
    if len(prompt_ids) + args.new_tokens > model.block_size:
        raise BenchmarkError(
            f"{len(prompt_ids)} prompt tokens + --new-tokens {args.new_tokens} exceed the "
            f"model's {model.block_size}-token context, where each side would window its own way"
        )
    results: dict = dict(
        machine=machine(),
        threads=args.threads,
        checkpoint=str(args.checkpoint),
        prompt=PROMPT,
        new_tokens=args.new_tokens,
        sampling="greedy",
        repeats=args.repeats,
        versions=dict(
            transformers=transformers.__version__, llama_cpp_python=llama_cpp.__version__
        ),
        load_average_before=os.getloadavg(),
    )
    with torch.inference_mode():
        reference = generate(model, prompt_ids, args.new_tokens, GREEDY, torch.Generator())
    print(f"greedy reference ({PROMPT!r} + {args.new_tokens} tokens):")
    print("  " + tokenizer.decode(prompt_ids + reference).replace("\n", "\n  "), flush=True)

    capacity = max(args.sequences)
    # compile_decode named on both: which of the two is the default is not this file's concern
    config = EngineConfig(max_running=capacity, compile_decode=False)
    eager = started_engine(model, tokenizer, config)
    started = time.perf_counter()
    config = EngineConfig(max_running=capacity, compile_decode=True)
    compiled = started_engine(model, tokenizer, config)
    compiled.warmed.wait()  # the decode thread compiles before it serves
    if not compiled.compiled:
        raise BenchmarkError(f"the decode step did not compile: {compiled.warm_up_problem}")
    results["compile_seconds"] = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(checkpoint, Path(tmp) / "hf")
        gguf = export_gguf(checkpoint, Path(tmp) / "model.gguf", "f32")
        llama = LlamaCppBatched(gguf, model.block_size, args.threads)
        sides = {
            "engine": engine_side(eager, prompt_ids, args.new_tokens),
            "compiled": engine_side(compiled, prompt_ids, args.new_tokens),
            "transformers": transformers_side(Path(tmp) / "hf", prompt_ids, args.new_tokens),
            "llama.cpp": llama.side(prompt_ids, args.new_tokens),
        }
        try:
            levels = measure(sides, args.sequences, reference, args.repeats)
        finally:
            llama.close()
            eager.stop()
            compiled.stop()
    print(
        f"greedy check: every run of all {len(sides)} sides gave the reference's "
        f"{args.new_tokens} tokens in every sequence",
        flush=True,
    )
    results["greedy_check"] = "every run of every side matched the reference in every sequence"
    results["rows"] = rows(levels)
    results["load_average_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/gpt-char"))
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1, help="torch's and llama.cpp's")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side; the median")
    parser.add_argument("--out", type=Path, default=Path("bench/results/peers.json"))
    args = parser.parse_args()
    if min(args.sequences) < 1 or args.new_tokens < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--sequences, --new-tokens, --repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()  # its export and load bars, on stderr
    try:
        results = run(args)
    except (BenchmarkError, InteropError) as err:
        sys.exit(f"bench.peers: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    partial.replace(args.out)  # atomic: a reader never sees half a file
    print()
    print(markdown(results))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
