"""The GPT runner's decode step: the attention span it reads, and its compiled graphs."""

import pytest
import torch

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
