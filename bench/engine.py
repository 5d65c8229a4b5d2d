"""In-process generation speed: the engine against the full-recompute baseline, same weights.

    python -m bench.engine [--checkpoint checkpoints/gpt-char] [--concurrency 1 8 32 64]
                           [--new-tokens 256] [--threads N] [--repeats N] [--no-compile]
                           [--no-window-sweep] [--out bench/results/engine.json]

For each setting (the reference GPT with random weights, and the shipped checkpoint when it
exists) and each concurrency c, every side generates the same c sequences of --new-tokens
tokens each (same prompt, seeds 0..c-1, temperature 1):

- baseline: the plain loop, recomputing the last block_size tokens of every sequence at every
  step: `models.sampling.generate` for one sequence, the same loop over one static batch for c;
- engine: c concurrent requests through `service.engine.Engine` (KV cache, continuous
  batching), timed from the first submit to the last completion. Like the baseline, each
  request hands back its whole result at the end (`stream_tokens=False`, as a non-streamed
  HTTP request does); "streamed" is the same engine delivering every token to the event loop
  as it comes (as a streamed request does), and "compiled" the engine with
  `compile_decode=True`, whole results.

The sides run back to back at each level, so their ratio compares them under the same machine
load. A window sweep then shows what the engine's re-prefill window (`window_keep`) costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import string
import time
from pathlib import Path

import torch

from bench.train_reference import machine
from models.checkpoint import load_checkpoint
from models.gpt import GPT, GPTConfig
from models.sampling import SamplingParams, generate, sample_next, seeded_generator
from models.tokenizer import CharTokenizer
from service.engine import Engine, EngineConfig, GenerationRequest

REFERENCE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)
PROMPT = "ROMEO:\n"
PARAMS = SamplingParams(temperature=1.0)
SEED = 1337


def reference_setting() -> tuple[GPT, CharTokenizer]:
    """The reference GPT setting with random weights, over a 65-character vocabulary (the size
    of tiny shakespeare's)."""
    chars = sorted(set(string.ascii_letters + string.digits + "\n !&',-.:;?$"))[:65]
    torch.manual_seed(SEED)
    return GPT(GPTConfig(vocab_size=len(chars), **REFERENCE)).eval(), CharTokenizer(chars)


@torch.inference_mode()
def static_batch_generate(
    model: GPT, prompt_ids: list[int], new_tokens: int, generators: list[torch.Generator]
) -> list[list[int]]:
    """`generate`'s plain loop over a static batch: every step recomputes the last block_size
    tokens of every row."""
    rows = len(generators)
    ids = torch.tensor([prompt_ids] * rows)
    seen = torch.zeros(rows, model.config.vocab_size, dtype=torch.bool)
    seen[:, ids[0]] = True
    for _ in range(new_tokens):
        logits, _ = model(ids[:, -model.block_size :])
        next_ids = sample_next(logits[:, -1, :], [PARAMS] * rows, generators, seen)
        seen[torch.arange(rows), next_ids] = True
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
    return ids[:, len(prompt_ids) :].tolist()


def baseline_tokens_per_s(model: GPT, prompt_ids: list[int], new_tokens: int, n: int) -> float:
    generators = [seeded_generator(seed) for seed in range(n)]
    started = time.perf_counter()
    if n == 1:
        generate(model, prompt_ids, new_tokens, PARAMS, generators[0])
    else:
        static_batch_generate(model, prompt_ids, new_tokens, generators)
    return n * new_tokens / (time.perf_counter() - started)


async def engine_tokens_per_s(
    engine: Engine, prompt_ids: list[int], new_tokens: int, n: int, stream_tokens: bool = False
) -> float:
    started = time.perf_counter()
    streams = [
        engine.submit(
            GenerationRequest(
                prompt_ids, new_tokens, PARAMS, seed=seed, stream_tokens=stream_tokens
            )
        )
        for seed in range(n)
    ]
    completions = await asyncio.gather(*(stream.collect() for stream in streams))
    elapsed = time.perf_counter() - started
    generated = sum(c.usage.completion_tokens for c in completions)
    assert generated == n * new_tokens, "every request should run to its length"
    return generated / elapsed


def started_engine(model: GPT, tokenizer: CharTokenizer, config: EngineConfig) -> Engine:
    engine = Engine(model, tokenizer, config)
    engine.start()
    return engine


async def bench_setting(
    name: str,
    model: GPT,
    tokenizer: CharTokenizer,
    concurrency: list[int],
    new_tokens: int,
    compiled: bool,
    repeats: int,
) -> dict:
    prompt_ids = tokenizer.encode(PROMPT)
    capacity = max(concurrency)
    eager = started_engine(model, tokenizer, EngineConfig(max_running=capacity))
    # side: (engine, whether each token goes to the event loop as it comes)
    sides = {"engine": (eager, False), "streamed": (eager, True)}
    compile_seconds = None
    if compiled:
        started = time.perf_counter()
        config = EngineConfig(max_running=capacity, compile_decode=True)
        sides["compiled"] = (started_engine(model, tokenizer, config), False)
        compile_seconds = round(time.perf_counter() - started, 1)
    baseline_tokens_per_s(model, prompt_ids, 8, 1)  # warm-up
    for engine, stream_tokens in sides.values():
        await engine_tokens_per_s(engine, prompt_ids, 8, 1, stream_tokens)
    rows = []
    for n in concurrency:
        # Back to back, so that all sides see the same machine load; with repeats, the best
        # run of each side, which is the one least disturbed by other processes.
        row = dict(concurrency=n, baseline=0.0, **dict.fromkeys(sides, 0.0))
        for _ in range(repeats):
            speed = baseline_tokens_per_s(model, prompt_ids, new_tokens, n)
            row["baseline"] = max(row["baseline"], speed)
            for kind, (engine, stream_tokens) in sides.items():
                speed = await engine_tokens_per_s(engine, prompt_ids, new_tokens, n, stream_tokens)
                row[kind] = max(row[kind], speed)
        report = ", ".join(f"{k} {v:.0f}" for k, v in row.items() if k != "concurrency")
        print(f"  {name} x{n}: {report} tok/s", flush=True)
        rows.append(
            {
                "concurrency": n,
                **{f"{k}_tokens_per_s": round(v, 1) for k, v in row.items() if k != "concurrency"},
                **{f"{k}_ratio": round(row[k] / row["baseline"], 2) for k in sides},
            }
        )
    for engine, _ in sides.values():
        engine.stop()
    return dict(
        name=name,
        config=vars(model.config),
        new_tokens=new_tokens,
        compile_seconds=compile_seconds,
        rows=rows,
    )


async def window_sweep(
    model: GPT, tokenizer: CharTokenizer, concurrency: list[int], new_tokens: int
) -> list[dict]:
    """Engine tokens/s for re-prefill windows of a quarter to all of block_size."""
    prompt_ids = tokenizer.encode(PROMPT)
    block = model.block_size
    rows = []
    for keep in (block // 4, block // 2, 3 * block // 4, block):
        config = EngineConfig(max_running=max(concurrency), window_keep=keep)
        engine = started_engine(model, tokenizer, config)
        for n in concurrency:
            speed = await engine_tokens_per_s(engine, prompt_ids, new_tokens, n)
            rows.append(dict(window_keep=keep, concurrency=n, engine_tokens_per_s=round(speed, 1)))
            print(f"  window_keep {keep} x{n}: {speed:.0f} tok/s", flush=True)
        engine.stop()
    return rows


def markdown(results: dict) -> str:
    compiled = any("compiled_ratio" in r for s in results["settings"] for r in s["rows"])
    head = (
        "| model | concurrency | baseline tok/s | engine tok/s | engine / baseline "
        "| streamed tok/s | streamed / baseline |"
    )
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if compiled:
        head += " compiled tok/s | compiled / baseline |"
        rule += " ---: | ---: |"
    lines = [head, rule]
    for setting in results["settings"]:
        for r in setting["rows"]:
            line = (
                f"| {setting['name']} | {r['concurrency']} | {r['baseline_tokens_per_s']:.0f} "
                f"| {r['engine_tokens_per_s']:.0f} | {r['engine_ratio']:.1f}x "
                f"| {r['streamed_tokens_per_s']:.0f} | {r['streamed_ratio']:.1f}x |"
            )
            if "compiled_ratio" in r:
                line += f" {r['compiled_tokens_per_s']:.0f} | {r['compiled_ratio']:.1f}x |"
            lines.append(line)
    if results.get("window_sweep"):
        lines += ["", "| window_keep | concurrency | engine tok/s |", "| ---: | ---: | ---: |"]
        for r in results["window_sweep"]:
            lines.append(
                f"| {r['window_keep']} | {r['concurrency']} | {r['engine_tokens_per_s']:.0f} |"
            )
    m = results["machine"]
    lines += [
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} "
        f"threads; load average {results['load_average_before'][0]:.1f} before, "
        f"{results['load_average_after'][0]:.1f} after",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/gpt-char"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled engine")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--no-window-sweep", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    results: dict = dict(
        machine=machine(),
        repeats=args.repeats,
        load_average_before=os.getloadavg(),
        settings=[],
    )
    model, tokenizer = reference_setting()
    levels, new_tokens = args.concurrency, args.new_tokens
    sides = dict(compiled=not args.no_compile, repeats=args.repeats)
    print("reference GPT (random weights):", flush=True)
    results["settings"].append(
        await bench_setting("reference", model, tokenizer, levels, new_tokens, **sides)
    )
    if not args.no_window_sweep:
        sweep_levels = sorted({1, 32} & set(levels)) or levels[:1]
        results["window_sweep"] = await window_sweep(model, tokenizer, sweep_levels, new_tokens)
    if (args.checkpoint / "manifest.json").is_file():
        checkpoint = load_checkpoint(args.checkpoint)
        print(f"{args.checkpoint}:", flush=True)
        results["settings"].append(
            await bench_setting(
                args.checkpoint.name,
                checkpoint.model,
                checkpoint.tokenizer,
                levels,
                new_tokens,
                **sides,
            )
        )
    else:
        print(f"skipping the shipped model: no checkpoint at {args.checkpoint}")
    results["load_average_after"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
