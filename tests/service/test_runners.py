"""The GPT runner's decode step: the attention span it reads, and its compiled forms."""

import threading
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.gpt import GPT, GPTConfig
from service.engine import aot
from service.engine.aot import AOTDecodeStep, AOTPrefill
from service.engine.runners import SPAN_STEP, GPTRunner, compile_blocker

BLOCK = 40


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)).eval()


def test_a_step_reads_past_the_longest_row_in_whole_span_steps_within_the_block():
    runner = GPTRunner(tiny_gpt(), capacity=2, window_keep=BLOCK // 2)
    assert runner.span(0) == SPAN_STEP  # the new token at position 0
    assert runner.span(SPAN_STEP - 1) == SPAN_STEP
    assert runner.span(SPAN_STEP) == 2 * SPAN_STEP
    assert runner.span(BLOCK - 1) == BLOCK  # 48 would pass the block


@pytest.fixture
def packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache folder of this test's own; returns where decode-step packages go."""
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    return aot.decode_step_folder()


needs_compiler = pytest.mark.skipif(
    compile_blocker(torch.device("cpu")) is not None, reason="no C++ compiler for inductor"
)


@needs_compiler
@torch.inference_mode()
def test_the_ahead_of_time_step_decodes_any_batch_at_any_length_as_the_model_does(
    packages: Path,
):
    """One package, built at warm-up, serves batches of 1 to 5 rows at lengths across the
    whole block and past it (re-prefills), each step's logits those of the model recomputing
    the tokens its cache rows hold."""
    model = tiny_gpt()
    runner = GPTRunner(model, capacity=5, window_keep=BLOCK // 2, compile_decode=True)
    assert runner.warm_up() is None and runner.compiled
    assert isinstance(runner.decode, AOTDecodeStep)
    assert runner.decode.path.parent == packages and runner.decode.path.exists()
    for rows in (1, 5, 2):
        runner.truncate(0)
        logits = runner.start([[1, 2, 3]] * rows)
        for _ in range(BLOCK + 5):
            logits = runner.advance(logits.argmax(-1).tolist())
            expected = model(torch.tensor(runner.windows))[0][:, -1]
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@needs_compiler
@torch.inference_mode()
def test_the_ahead_of_time_prefill_fills_any_rows_at_any_length_as_the_model_does(
    packages: Path,
):
    """Its logits and what it writes into the cache are the eager prefill's, for one row and
    several, in any order of rows, from a one-token prompt to a whole block."""
    model = tiny_gpt()
    cache, eager = model.new_cache(5), model.new_cache(5)
    prefill = aot.compiled_steps(model, cache, packages).prefill
    for rows, length in (([0], 1), ([4, 1, 2], 7), ([3, 0], BLOCK)):
        idx = torch.randint(0, 11, (len(rows), length))
        slots = torch.tensor(rows)
        torch.testing.assert_close(
            prefill(idx, cache, slots), model.prefill(idx, eager, slots), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(cache.kv, eager.kv, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="^the compiled prefill failed"):
        prefill(torch.zeros(1, BLOCK + 1, dtype=torch.long), cache, torch.tensor([0]))


@needs_compiler
@torch.inference_mode()
def test_a_built_step_is_loaded_again_and_other_weights_get_a_package_of_their_own(
    monkeypatch: pytest.MonkeyPatch, packages: Path
):
    model = tiny_gpt()
    GPTRunner(model, capacity=3, window_keep=BLOCK // 2, compile_decode=True).warm_up()
    built = sorted(packages.iterdir())  # and no half-written file left beside them
    assert [p.name.split("-")[0] for p in built] == ["decode", "prefill"]
    assert {p.suffix for p in built} == {".pt2"}

    def no_build(*args: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(aot, "build", no_build)
    again = GPTRunner(model, capacity=3, window_keep=BLOCK // 2, compile_decode=True)
    assert again.warm_up() is None and isinstance(again.decode, AOTDecodeStep)
    assert again.decode.path == built[0]
    assert (
        isinstance(again.prefill_step, AOTPrefill) and again.prefill_step.program.path == built[1]
    )

    other = tiny_gpt()
    other.lm_head.weight.data.add_(0.01)  # the tied embedding: other weights, same shapes
    assert aot.BuildRequest.of(other, 3).package_name("decode") != built[0].name
    assert aot.BuildRequest.of(model, 4).package_name("decode") != built[0].name  # batch


@needs_compiler
def test_engines_warming_up_at_once_each_get_their_compiled_step(packages: Path):
    """As the server's engines do, each in its own thread: two models, and a second engine
    of the first, all compiled (torch.export's tracing state is global: see aot.BUILDING)."""
    first, second = tiny_gpt(), tiny_gpt()
    second.lm_head.weight.data.add_(0.01)
    runners = [
        GPTRunner(model, capacity=3, window_keep=BLOCK // 2, compile_decode=True)
        for model in (first, second, first)
    ]
    problems: list[str | None] = []

    def warm_up(runner: GPTRunner) -> None:
        with torch.inference_mode():
            problems.append(runner.warm_up())

    threads = [threading.Thread(target=warm_up, args=(r,)) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == [None, None, None]
    assert all(isinstance(r.decode, AOTDecodeStep) for r in runners)
    assert len(list(packages.iterdir())) == 4  # two models, two programs each


@needs_compiler
def test_a_package_is_built_in_a_process_of_its_own(
    monkeypatch: pytest.MonkeyPatch, packages: Path
):
    """torch.export swaps nn.Module.__call__ and other globals while it traces: in the
    server's process it broke another engine's prefill mid-build (and its own export), so
    export and compile run in a child process. Here they would fail in this one."""

    def not_here(*args: object) -> None:
        raise AssertionError("exported in the serving process")

    monkeypatch.setattr(aot, "export_and_compile", not_here)
    runner = GPTRunner(tiny_gpt(), capacity=2, window_keep=BLOCK // 2, compile_decode=True)
    assert runner.warm_up() is None and isinstance(runner.decode, AOTDecodeStep)


@needs_compiler
@torch.inference_mode()
def test_a_build_that_fails_in_its_process_falls_back_to_eager_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, packages: Path
):
    monkeypatch.setenv("PATH", str(tmp_path))  # the child finds no C++ compiler
    runner = GPTRunner(tiny_gpt(), capacity=2, window_keep=BLOCK // 2, compile_decode=True)
    problem = runner.warm_up()
    assert problem is not None and "building the decode step failed" in problem, problem
    assert not runner.compiled and list(packages.iterdir()) == []
    tokens = runner.start([[1, 2, 3]]).argmax(-1).tolist()
    assert runner.advance(tokens).shape == (1, 11)  # decoding eagerly


@needs_compiler
@torch.inference_mode()
def test_a_package_that_does_not_load_is_built_anew(packages: Path):
    model = tiny_gpt()
    cache = model.new_cache(2)
    packages.mkdir(parents=True)
    for program in aot.PROGRAMS:
        (packages / aot.BuildRequest.of(model, 2).package_name(program)).write_bytes(b"half")
    step = aot.compiled_steps(model, cache, packages).decode
    tokens, positions = torch.tensor([1, 2]), torch.tensor([0, 0])
    torch.testing.assert_close(
        step(tokens, cache, positions, span=16), model.decode(tokens, cache, positions, span=16)
    )


@needs_compiler
@torch.inference_mode()
def test_other_threads_run_python_while_a_compiled_step_computes(packages: Path):
    """The step lets go of the GIL, so that the event loop can stream the last step's tokens
    while it computes. Each round a watcher thread is let go just before a step; once it has
    the GIL it holds it for 2 ms and measures how much CPU time this thread spent meanwhile.
    A step that held the GIL would stand still until the watcher let go: every round 0.
    (Measured: with the package's own runner, 0 in all 50 rounds; with this, over 100 µs in
    44 to 46 of them. The tiny model's step, some 25 µs, ends before the watcher wakes.)"""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=64, n_layer=2, n_head=4, n_embd=128)).eval()
    cache = model.new_cache(32)
    step = aot.compiled_steps(model, cache, packages).decode
    tokens = torch.zeros(32, dtype=torch.long)
    stepping = time.pthread_getcpuclockid(threading.get_ident())  # this thread's CPU clock
    go, recorded = threading.Semaphore(0), threading.Semaphore(0)
    computed: list[float] = []  # per round: this thread's CPU time while the watcher held the GIL

    def watch() -> None:
        for _ in range(50):
            go.acquire()
            before = time.clock_gettime(stepping)
            until = time.perf_counter() + 0.002
            while time.perf_counter() < until:  # holding the GIL for longer than a step
                pass
            computed.append(time.clock_gettime(stepping) - before)
            recorded.release()

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server's engines run: the other core is the watcher's
    try:
        for _ in range(50):
            go.release()
            step(tokens, cache, tokens, span=64)
            recorded.acquire()
    finally:
        torch.set_num_threads(threads)
    watcher.join()
    assert max(computed) > 100e-6, f"the step computed only while it held the GIL: {computed}"


@needs_compiler
@torch.inference_mode()
def test_a_step_the_compiled_code_refuses_raises_its_reason_and_the_next_one_works(
    packages: Path,
):
    model = tiny_gpt()
    cache = model.new_cache(2)
    step = aot.compiled_steps(model, cache, packages).decode
    rows = torch.zeros(3, dtype=torch.long)  # one more row than the cache has
    with pytest.raises(RuntimeError, match="^the compiled decode step failed: index out of"):
        step(rows, cache, rows, span=16)
    tokens, positions = torch.tensor([1, 2]), torch.tensor([0, 0])
    torch.testing.assert_close(
        step(tokens, cache, positions, span=16), model.decode(tokens, cache, positions, span=16)
    )


@torch.inference_mode()
def test_padded_batches_decode_exactly_as_unpadded_ones_and_rows_join_cleanly():
    """Batches padded up to a power of two (as CUDA graphs need) give every real row the
    logits an unpadded batch gives it, before and after a sequence joins into a row the
    padding wrote to."""
    model = tiny_gpt()
    plain = GPTRunner(model, capacity=6, window_keep=BLOCK // 2)
    padded = GPTRunner(model, capacity=6, window_keep=BLOCK // 2, batch_buckets=True)
    assert padded.buckets == [1, 2, 4, 6]
    prompts = [[1, 2, 3], [4, 5], [6]]
    for runner in (plain, padded):
        runner.start(prompts)  # 3 rows: padded to 4, row 3 holds padding
    for step in range(BLOCK + 3):
        if step == 5:  # joins into row 3
            for runner in (plain, padded):
                runner.start([[7, 8, 9, 10]])
        tokens = [(step + row) % 11 for row in range(len(plain.windows))]
        torch.testing.assert_close(padded.advance(tokens), plain.advance(tokens))


CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "gpt-char"


@torch.inference_mode()
def test_bf16_decoding_keeps_the_logprobs_close_to_float32():
    """The decode precision CUDA gets by default, run here on the CPU: along 200 greedy
    steps of two rows of the shipped gpt-char, the chosen token's logprob stays within 0.1
    of float32's, each distribution within 0.05 in total variation, and the greedy choice
    is the same at least 97% of the time."""
    checkpoint = load_checkpoint(CHECKPOINT)
    model, tokenizer = checkpoint.model.eval(), checkpoint.tokenizer
    exact = GPTRunner(model, capacity=2, window_keep=64)
    bf16 = GPTRunner(model, capacity=2, window_keep=64, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.float32  # the model itself is untouched
    prompts = [tokenizer.encode("ROMEO:\nWhat say you, my lord?\n"), tokenizer.encode("KING")]
    logits, logits_bf16 = exact.start(prompts), bf16.start(prompts)
    same_choice = 0
    for _ in range(200):
        assert logits_bf16.dtype == torch.float32  # whatever the decode precision
        logprobs, logprobs_bf16 = logits.log_softmax(-1), logits_bf16.log_softmax(-1)
        chosen = logprobs.argmax(-1, keepdim=True)
        gap = (logprobs.gather(1, chosen) - logprobs_bf16.gather(1, chosen)).abs()
        assert gap.max() < 0.1
        total_variation = (logprobs.exp() - logprobs_bf16.exp()).abs().sum(-1) / 2
        assert total_variation.max() < 0.05
        same_choice += int((logprobs_bf16.argmax(-1, keepdim=True) == chosen).sum())
        logits, logits_bf16 = (
            exact.advance(chosen[:, 0].tolist()),
            bf16.advance(chosen[:, 0].tolist()),
        )
    assert same_choice >= 0.97 * 400
