"""The GPT runner's decode step: the attention span it reads, and its compiled graphs."""

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.gpt import GPT, GPTConfig
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


@pytest.mark.skipif(
    compile_blocker(torch.device("cpu")) is not None, reason="no C++ compiler for inductor"
)
@torch.inference_mode()
def test_after_warm_up_the_compiled_step_compiles_nothing_new_at_any_batch_or_length(
    monkeypatch: pytest.MonkeyPatch,
):
    """Every graph the step needs is built by warm_up: decoding batches of 1 to 5 rows at
    lengths across the whole block afterwards must not recompile (which would stall the
    requests of that step for seconds)."""
    model = tiny_gpt()
    runner = GPTRunner(model, capacity=5, window_keep=BLOCK // 2, compile_decode=True)
    assert runner.warm_up() is None and runner.compiled
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    for rows in (1, 5, 2):
        runner.truncate(0)
        logits = runner.start([[1, 2, 3]] * rows)
        for _ in range(BLOCK + 5):  # through the block, and past it (re-prefills)
            logits = runner.advance(logits.argmax(-1).tolist())
            # what the model gives on the tokens each cache row holds, recomputed
            expected = model(torch.tensor(runner.windows))[0][:, -1]
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


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
