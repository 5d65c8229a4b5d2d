"""The generation engine on small random-init models (no checkpoints needed)."""

from __future__ import annotations

import asyncio
import math
import string
import threading
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from models.bigram import BigramConfig, BigramLanguageModel
from models.gpt import GPT, GPTConfig
from models.sampling import SamplingParams, generate, seeded_generator
from models.tokenizer import CharTokenizer
from service.engine import (
    Completion,
    Engine,
    EngineClosedError,
    EngineConfig,
    EngineError,
    GenerationRequest,
    QueueFullError,
    RequestFailedError,
    aot,
)
from service.engine import core as engine_core
from service.engine.metrics import EngineCollector
from service.engine.text import IncrementalDecoder, StopChecker

pytestmark = pytest.mark.anyio

TOKENIZER = CharTokenizer(sorted(set(string.ascii_lowercase + " .\n")))
V = TOKENIZER.vocab_size
BLOCK = 16
GREEDY = SamplingParams(temperature=0.0)


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def gpt() -> GPT:
    return tiny_gpt()


@pytest.fixture
async def engine(gpt: GPT):
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=40, max_waiting=8))
    engine.start()
    yield engine
    engine.stop()


def request(prompt: str = "the cat", max_new_tokens: int = 20, **kwargs) -> GenerationRequest:
    return GenerationRequest(TOKENIZER.encode(prompt), max_new_tokens, **kwargs)


def windowed_greedy(model: GPT, prompt: list[int], new_tokens: int, keep: int) -> list[int]:
    """Full recompute under the engine's windowing rule: the model sees the whole sequence
    while it fits in block_size, and from the step it would not, only the last `keep` tokens
    (which then grow until they fill the block again)."""

    def fit(tokens: list[int]) -> list[int]:
        return tokens if len(tokens) <= model.block_size else tokens[-keep:]

    context, out = fit(prompt), []
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits, _ = model(torch.tensor([context]))
            out.append(int(logits[0, -1].argmax()))
            context = fit(context + out[-1:])
    return out


async def test_greedy_engine_text_is_the_recompute_text(engine: Engine, gpt: GPT):
    req = request("the cat", max_new_tokens=BLOCK - 7, sampling=GREEDY)
    completion = await engine.submit(req).collect()
    expected = generate(gpt, list(req.prompt_ids), req.max_new_tokens, GREEDY, seeded_generator(0))
    assert [t.token_id for t in completion.tokens] == expected
    assert completion.text == TOKENIZER.decode(expected)
    assert completion.finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 9)


@pytest.mark.parametrize("keep", [1, 5, 8, BLOCK])
async def test_past_block_size_generation_goes_on_with_the_windowing_rule(gpt: GPT, keep: int):
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=4, window_keep=keep))
    engine.start()
    prompts = ["a", "the cat sat on", "x" * (BLOCK + 5)]  # short, near the block, beyond it
    streams = [engine.submit(request(p, 3 * BLOCK + 3, sampling=GREEDY)) for p in prompts]
    completions = [await s.collect() for s in streams]
    engine.stop()
    for prompt, completion in zip(prompts, completions, strict=True):
        expected = windowed_greedy(gpt, TOKENIZER.encode(prompt), 3 * BLOCK + 3, keep)
        assert [t.token_id for t in completion.tokens] == expected


@pytest.mark.slow
async def test_a_compiled_decode_step_gives_the_eager_text(gpt: GPT):
    config = EngineConfig(max_running=4, compile_decode=True)
    engine = Engine(gpt, TOKENIZER, config)
    engine.start()  # compiles: some seconds
    prompts = ["a", "the cat sat on"]  # one row alone, then two: both compiled graphs
    alone = await engine.submit(request(prompts[0], 2 * BLOCK, sampling=GREEDY)).collect()
    streams = [engine.submit(request(p, 2 * BLOCK, sampling=GREEDY)) for p in prompts]
    together = [await s.collect() for s in streams]
    engine.stop()
    for prompt, completion in zip(prompts, together, strict=True):
        expected = windowed_greedy(gpt, TOKENIZER.encode(prompt), 2 * BLOCK, BLOCK // 2)
        assert [t.token_id for t in completion.tokens] == expected
    assert alone.text == together[0].text


async def test_a_decode_step_that_does_not_compile_falls_back_to_eager_and_says_why(
    gpt: GPT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    def build_that_fails(*args: object) -> None:
        raise RuntimeError("C++ compile error\ng++: not found")

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path))  # no package built before
    monkeypatch.setattr(aot, "build", build_that_fails)
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=2, compile_decode=True))
    try:
        engine.start()
        # accepted while it warms up; answered once it falls back
        stream = engine.submit(request("the cat", BLOCK, sampling=GREEDY))
        completion = await stream.collect()
        assert engine.warmed.is_set() and not engine.compiled
        assert engine.warm_up_problem is not None
        assert "(C++ compile error); decoding eagerly" in engine.warm_up_problem
        expected = windowed_greedy(gpt, TOKENIZER.encode("the cat"), BLOCK, BLOCK // 2)
        assert [t.token_id for t in completion.tokens] == expected
    finally:
        engine.stop()


async def test_seeded_text_is_the_same_alone_and_among_31_others(engine: Engine):
    params = SamplingParams(temperature=0.9, top_k=12, top_p=0.9, min_p=0.02)
    penalized = SamplingParams(temperature=1.2, repetition_penalty=1.3)
    # longer than the uniforms a row draws ahead (UNIFORMS_AHEAD), so that refills happen
    # at different steps for different rows
    probes = [
        request("the cat", 150, sampling=params, seed=7),
        request("a dog.", 150, sampling=penalized, seed=8),
        request("x", 150, seed=9),
    ]
    alone = [(await engine.submit(p).collect()).text for p in probes]

    others = [
        request(
            "abcdefghij"[: 1 + i % 9],
            5 + 3 * i,  # they leave at different steps, so the batch keeps changing
            sampling=SamplingParams(temperature=0.5 + i / 20, top_k=i % 4 * 5, top_p=0.8),
            seed=100 + i,
        )
        for i in range(29)
    ]
    streams = [engine.submit(r) for r in others[:15]]
    streams += [engine.submit(p) for p in probes]
    streams += [engine.submit(r) for r in others[15:]]
    together = await asyncio.gather(*(s.collect() for s in streams))
    assert [c.text for c in together[15:18]] == alone
    assert len({c.text for c in together}) > 20  # the seeds do matter


async def test_seeded_text_is_the_same_among_greedy_requests_that_come_and_go(
    engine: Engine, caplog: pytest.LogCaptureFixture
):
    """Steps whose rows are all greedy skip the uniforms; a seeded row that runs through such
    steps, joining them and outliving them, still gets its solo text."""
    probe = request(
        "the cat", 2 * engine_core.UNIFORMS_AHEAD + 5, sampling=SamplingParams(), seed=11
    )
    alone = (await engine.submit(probe).collect()).text
    greedy = [request("a dog"[: 1 + i], 10 + 20 * i, sampling=GREEDY) for i in range(4)]
    solo_greedy = [(await engine.submit(r).collect()).text for r in greedy]
    first = [engine.submit(r) for r in greedy]
    await asyncio.sleep(0.05)  # a few all-greedy steps before the probe joins
    streams = [*first, engine.submit(probe)]
    results = [c.text for c in await asyncio.gather(*(s.collect() for s in streams))]
    assert results == [*solo_greedy, alone]
    assert "sampling them one by one" not in caplog.text  # the batch path took every step


async def test_the_same_request_twice_gives_the_same_text(engine: Engine):
    req = request("the", 30, sampling=SamplingParams(temperature=1.0), seed=3)
    first, second = [await engine.submit(req).collect() for _ in range(2)]
    assert first.text == second.text


async def test_a_reader_that_fell_behind_takes_the_piled_up_tokens_at_once(engine: Engine):
    whole = await engine.submit(request(seed=4)).collect()
    stream = engine.submit(request(seed=4))
    while stream.queue.qsize() < 21:  # 20 tokens and the completion
        await asyncio.sleep(0.01)
    piled_up = stream.ready_tokens()
    assert [t.token_id for t in piled_up] == [t.token_id for t in whole.tokens]
    assert stream.ready_tokens() == []
    assert [t async for t in stream] == []
    assert stream.completion == whole


async def test_a_stream_interval_groups_later_tokens_but_not_the_first_or_the_end(gpt: GPT):
    every_step = Engine(gpt, TOKENIZER, EngineConfig(max_running=4))
    grouped = Engine(gpt, TOKENIZER, EngineConfig(max_running=4, stream_interval=60.0))
    for engine in (every_step, grouped):
        engine.start()
    try:
        whole = await every_step.submit(request(seed=6)).collect()
        stream = grouped.submit(request(seed=6))
        first = await anext(stream)
        assert stream.ready_tokens() == []  # the first token was handed over alone
        # within 60 s the other 19 wait; the end does not, and takes them along
        rest = [await anext(stream), *stream.ready_tokens()]
        assert [t.token_id for t in [first, *rest]] == [t.token_id for t in whole.tokens]
        assert isinstance(stream.held_back, Completion)  # it came with them
        assert await stream.collect() == whole
    finally:
        for engine in (every_step, grouped):
            engine.stop()


async def test_a_stream_interval_hands_over_tokens_once_it_has_passed(gpt: GPT):
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=4, stream_interval=0.05))
    engine.start()
    try:
        async with engine.submit(request("the", 100_000)) as stream:
            await anext(stream)
            await anext(stream)  # a later token comes before the request ends
            assert stream.completion is None
            deliveries = 1
            while deliveries < 4:  # each hand-over after the first brings a group of tokens
                await anext(stream)
                assert len(stream.ready_tokens()) > 1
                deliveries += 1
    finally:
        engine.stop()


async def test_a_request_without_token_events_gets_them_all_in_its_completion(engine: Engine):
    unstopped = await engine.submit(request(seed=5)).collect()
    stop = [unstopped.text[8:10]]  # a stop string this text runs into
    streamed = await engine.submit(request(seed=5, stop=stop)).collect()
    stream = engine.submit(request(seed=5, stop=stop, stream_tokens=False))
    assert [t async for t in stream] == []
    assert stream.completion == streamed
    assert stream.completion.tokens and stream.completion.finish_reason == "stop"


async def test_stop_string_ends_generation_and_is_cut_out(engine: Engine):
    free = await engine.submit(request("the cat", 40, sampling=GREEDY)).collect()
    stop = free.text[12:14]
    cut = free.text.index(stop)
    stream = engine.submit(request("the cat", 40, sampling=GREEDY, stop=("zzzz", stop)))
    events = [event async for event in stream]
    completion = stream.completion
    assert completion.finish_reason == "stop"
    assert completion.text == free.text[:cut]
    assert "".join(e.text for e in events) == completion.text  # nothing of the stop streamed
    assert completion.usage.completion_tokens == cut + len(stop)  # the stop's tokens count


async def test_logprobs_are_the_models_own_and_finite(engine: Engine, gpt: GPT):
    req = request("the cat", 6, sampling=SamplingParams(temperature=2.0), seed=1, top_logprobs=3)
    completion = await engine.submit(req).collect()
    ids = list(req.prompt_ids)
    for event in completion.tokens:
        with torch.inference_mode():
            logits, _ = gpt(torch.tensor([ids]))
        expected = logits[0, -1].log_softmax(dim=-1)  # before temperature
        assert event.logprob == pytest.approx(float(expected[event.token_id]), abs=1e-4)
        assert len(event.top_logprobs) == 3
        assert [t.token_id for t in event.top_logprobs] == expected.topk(3).indices.tolist()
        assert all(t.text == TOKENIZER.token_text(t.token_id) for t in event.top_logprobs)
        assert all(math.isfinite(t.logprob) for t in event.top_logprobs)
        ids.append(event.token_id)


async def test_cancel_frees_the_slot_within_a_step(engine: Engine):
    stream = engine.submit(request("the", 100_000))
    await anext(stream)
    assert engine.metrics.running == 1
    steps_at_cancel = engine.metrics.decode_steps
    stream.cancel()
    completion = await stream.collect()
    assert completion.finish_reason == "cancelled"
    assert engine.metrics.running == 0
    assert engine.metrics.decode_steps - steps_at_cancel <= 1


async def test_leaving_the_context_early_cancels(engine: Engine):
    async with engine.submit(request("the", 100_000)) as stream:
        async for _ in stream:
            break
    assert (await stream.collect()).finish_reason == "cancelled"


async def test_a_full_queue_refuses_at_once(gpt: GPT):
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=1, max_waiting=1))
    engine.start()
    running = engine.submit(request("a", 100_000))
    waiting = engine.submit(request("b", 5))
    with pytest.raises(QueueFullError):
        engine.submit(request("c", 5))
    assert engine.metrics.requests_rejected == 1
    running.cancel()
    assert (await waiting.collect()).finish_reason == "length"
    engine.stop()


async def test_requests_being_prefilled_still_count_against_the_queue(gpt: GPT):
    """A request the decode thread has taken from the queue but not yet prefilled holds its
    row: while it is in flight, only max_waiting more fit (this failed once on a fresh clone,
    when the full-queue test above submitted during a prefill)."""
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=1, max_waiting=1))
    release, real_start = threading.Event(), engine.runner.start

    def slow_start(contexts):
        release.wait(10)
        return real_start(contexts)

    engine.runner.start = slow_start
    engine.start()
    running = engine.submit(request("a", 100_000))
    while engine.admitting == 0:  # the decode thread is inside the prefill of "a"
        await asyncio.sleep(0.001)
    waiting = engine.submit(request("b", 5))
    with pytest.raises(QueueFullError):
        engine.submit(request("c", 5))
    release.set()
    running.cancel()
    assert (await waiting.collect()).finish_reason == "length"
    engine.stop()


async def test_stop_cancels_what_runs_and_refuses_new_requests(gpt: GPT):
    engine = Engine(gpt, TOKENIZER)
    engine.start()
    stream = engine.submit(request("the", 100_000))
    await anext(stream)
    await asyncio.to_thread(engine.stop)
    assert (await stream.collect()).finish_reason == "cancelled"
    with pytest.raises(EngineClosedError):
        engine.submit(request())


async def test_invalid_requests_are_refused(engine: Engine):
    with pytest.raises(ValueError, match="prompt_ids"):
        GenerationRequest([], 5)
    with pytest.raises(ValueError, match="top_logprobs"):
        request(top_logprobs=6)
    with pytest.raises(ValueError, match="token ids"):
        engine.submit(GenerationRequest([V], 5))


POISONED_TEMPERATURE = 0.666


def poison_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling raises whenever the batch holds a request at POISONED_TEMPERATURE: a failure
    that belongs to that one request."""
    real = engine_core.sample_batch

    def sample_batch(logits, params, *rest):
        if torch.isclose(params.temperature, torch.tensor(POISONED_TEMPERATURE)).any():
            raise ValueError("this request's sampling parameters are poisoned")
        return real(logits, params, *rest)

    monkeypatch.setattr(engine_core, "sample_batch", sample_batch)


def seeded_requests(count: int) -> list[GenerationRequest]:
    params = SamplingParams(temperature=0.9, top_k=10, repetition_penalty=1.2)
    return [request("the cat"[: 1 + i], 30 + i, sampling=params, seed=i) for i in range(count)]


async def test_a_request_whose_sampling_fails_ends_alone(engine, monkeypatch):
    good = seeded_requests(7)
    alone = [(await engine.submit(r).collect()).text for r in good]
    poison_sampling(monkeypatch)
    bad = request("a dog", 50, sampling=SamplingParams(temperature=POISONED_TEMPERATURE))
    streams = engine.submit_all([*good[:3], bad, *good[3:]])
    results = await asyncio.gather(*(s.collect() for s in streams), return_exceptions=True)
    failure = results.pop(3)
    assert isinstance(failure, RequestFailedError) and "poisoned" in str(failure)
    assert [c.text for c in results] == alone  # the others: exactly their solo text
    assert engine.metrics.requests_failed == 1
    assert (await engine.submit(good[0]).collect()).text == alone[0]  # and it serves on


async def test_a_prefill_that_fails_ends_that_request_alone(engine, monkeypatch):
    runner, real = engine.runner, engine.runner.start
    marker = TOKENIZER.encode("q")[0]

    def start(contexts):
        if any(marker in c for c in contexts):
            raise RuntimeError("cannot prefill this prompt")
        return real(contexts)

    monkeypatch.setattr(runner, "start", start)
    good = seeded_requests(4)
    alone = [(await engine.submit(r).collect()).text for r in good]
    streams = engine.submit_all([good[0], request("quiet", 10), *good[1:]])
    results = await asyncio.gather(*(s.collect() for s in streams), return_exceptions=True)
    assert isinstance(results.pop(1), RequestFailedError)
    assert [c.text for c in results] == alone


async def test_a_failed_forward_pass_ends_the_batch_and_the_engine_recovers(engine, monkeypatch):
    running = engine.submit(request("the", 100_000))
    await anext(running)
    real = engine.runner.advance

    def advance_once(token_ids):
        monkeypatch.setattr(engine.runner, "advance", real)
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "advance", advance_once)
    with pytest.raises(EngineError, match="device lost"):
        await running.collect()
    completion = await engine.submit(request("the", 5, sampling=GREEDY)).collect()
    assert completion.finish_reason == "length" and len(completion.tokens) == 5


async def test_requests_are_admitted_all_or_none(gpt: GPT):
    engine = Engine(gpt, TOKENIZER, EngineConfig(max_running=2, max_waiting=1))
    engine.start()
    with pytest.raises(QueueFullError, match="room for 3 more, 4 asked for"):
        engine.submit_all([request(max_new_tokens=5)] * 4)
    assert engine.metrics.waiting == 0 and not engine.waiting
    completions = [await s.collect() for s in engine.submit_all([request(max_new_tokens=5)] * 3)]
    assert all(c.finish_reason == "length" for c in completions)
    engine.stop()


async def test_a_request_past_its_deadline_ends_with_timeout(engine: Engine):
    stream = engine.submit(request("the", 100_000, timeout=0.2))
    completion = await stream.collect()
    assert completion.finish_reason == "timeout"
    assert completion.tokens and engine.metrics.requests_finished["timeout"] == 1


async def test_a_top_k_beyond_the_vocabulary_keeps_every_token(engine: Engine):
    wide = SamplingParams(temperature=1.0, top_k=2**62)
    texts = [
        (await engine.submit(request(sampling=params, seed=5)).collect()).text
        for params in (wide, SamplingParams(temperature=1.0))
    ]
    assert texts[0] == texts[1]


async def test_bigram_samples_from_its_table():
    torch.manual_seed(0)
    model = BigramLanguageModel(BigramConfig(vocab_size=V, init="normal"))
    with torch.no_grad():
        model.token_embedding_table.weight.mul_(300)  # peaked rows: greedy is unambiguous
    engine = Engine(model.eval(), TOKENIZER, EngineConfig(max_running=8))
    engine.start()
    greedy = await engine.submit(request("q", 12, sampling=GREEDY)).collect()
    flat = SamplingParams(temperature=50.0)  # nearly uniform: the seed decides
    seeded = [request("the", 50, sampling=flat, seed=s) for s in (1, 1, 2)]
    texts = [c.text for c in await asyncio.gather(*(engine.submit(r).collect() for r in seeded))]
    engine.stop()
    table, previous = model.probability_table().detach(), TOKENIZER.encode("q")[0]
    for event in greedy.tokens:
        row = table[previous]
        assert event.token_id == int(row.argmax())
        assert event.logprob == pytest.approx(float(row[event.token_id].log()), abs=1e-4)
        previous = event.token_id
    assert texts[0] == texts[1] != texts[2]


async def test_metrics_count_and_export(engine: Engine):
    await engine.submit(request("the", 10)).collect()
    m = engine.metrics
    assert m.tokens_generated >= 10 and m.requests_finished["length"] >= 1
    assert m.time_to_first_token.count >= 1 and m.inter_token_latency.count >= 9
    registry = CollectorRegistry()
    registry.register(EngineCollector(lambda: {"gpt-tiny": engine.metrics}))
    text = generate_latest(registry).decode()
    assert 'tinygpt_engine_generated_tokens_total{model="gpt-tiny"}' in text
    assert 'tinygpt_engine_time_to_first_token_seconds_bucket{le="+Inf",model="gpt-tiny"}' in text
    assert 'tinygpt_engine_running_sequences{model="gpt-tiny"} 0.0' in text


def test_incremental_decoding_never_splits_a_character():
    # byte tokens: "é" is two bytes, so two tokens, and decodes only once both are there
    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    decoder = IncrementalDecoder(decode)
    deltas = [decoder.push(b) for b in "aé!".encode()]
    assert deltas == ["a", "", "é", "!"]


def test_stop_checker():
    assert StopChecker(["wor", "o wor"]).stop_at("hello wor", new_chars=1) == 4  # earliest
    assert StopChecker(["lo"]).stop_at("hello wor", new_chars=1) is None  # seen back then
    assert StopChecker(["xyz"]).stop_at("hello", new_chars=5) is None
    assert StopChecker(["end", "n."]).releasable("the en") == 4  # "en" may become "end"
    assert StopChecker(["end"]).releasable("the cat") == 7
    assert StopChecker(["abab"]).releasable("xxaba") == 2  # "aba" may become "abab"
    assert StopChecker([]).releasable("the en") == 6
