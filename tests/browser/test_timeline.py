"""The playground's Training view in Debian's Chromium, against a real server with the shipped
models (retrained with timelines) and one without a timeline; photographed into
test-artifacts/browser/."""

from __future__ import annotations

import pytest

from tests.browser.pages import BIGRAM, GPT, LARGE_BIGRAM, pick_model, shot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_training(page, model_id: str) -> None:
    pick_model(page, model_id)
    page.click("#tab-train")
    page.wait_for_function(
        "model => document.getElementById('train-map').dataset.model === model", arg=model_id
    )


def go_to(page, index: int, step: int) -> None:
    """Move the slider to recorded step number `index` (step `step`), as a person drags it."""
    page.eval_on_selector(
        "#train-step",
        "(slider, index) => { slider.value = String(index);"
        " slider.dispatchEvent(new Event('input', { bubbles: true })); }",
        index,
    )
    page.wait_for_function(
        "step => document.getElementById('train-map').dataset.step === String(step)", arg=step
    )


def drawn(page, ids: list[int]) -> list[dict]:
    return page.evaluate(
        "ids => ids.map(id => document.getElementById('train-map').pointPosition(id))", ids
    )


def neighbour_ids(page) -> list[int]:
    return page.eval_on_selector_all(
        "#train-neighbours li", "els => els.map(e => Number(e.dataset.id))"
    )


def assert_drawn_as(positions: list[dict], frame: dict) -> None:
    """The points on the canvas are the API's coordinates, scaled alike on both axes (y up)."""
    xs, ys = frame["x"], frame["y"]
    i, j = max(range(len(xs)), key=xs.__getitem__), min(range(len(xs)), key=xs.__getitem__)
    scale = (positions[i]["x"] - positions[j]["x"]) / (xs[i] - xs[j])
    assert scale > 0
    for k in range(len(xs)):
        assert positions[k]["x"] - positions[j]["x"] == pytest.approx(
            scale * (xs[k] - xs[j]), abs=0.01
        )
        assert positions[j]["y"] - positions[k]["y"] == pytest.approx(
            scale * (ys[k] - ys[j]), abs=0.01
        )


def test_the_slider_moves_the_gpt_map_from_step_0_to_the_last(page, api, artifacts):
    body = api.get(f"/v1/models/{GPT}/timeline", params={"tokens": "e", "k": 8}).json()
    steps = [s["step"] for s in body["steps"]]
    open_training(page, GPT)
    assert page.input_value("#train-step") == str(len(steps) - 1)  # opens at the end
    last = drawn(page, body["ids"])
    assert_drawn_as(last, body["frames"][-1])
    assert neighbour_ids(page) == [n["id"] for n in body["neighbours"][0]["steps"][-1]]

    go_to(page, 0, 0)
    first = drawn(page, body["ids"])
    assert_drawn_as(first, body["frames"][0])
    moved = sum(
        abs(a["x"] - b["x"]) + abs(a["y"] - b["y"]) > 5 for a, b in zip(first, last, strict=True)
    )
    assert moved > len(body["ids"]) // 2, "most points move between step 0 and the last"
    at_zero = [n["id"] for n in body["neighbours"][0]["steps"][0]]
    assert neighbour_ids(page) == at_zero != [n["id"] for n in body["neighbours"][0]["steps"][-1]]
    assert "step 0" in page.text_content("#train-step-label")

    middle = len(steps) // 2
    go_to(page, middle, steps[middle])
    assert_drawn_as(drawn(page, body["ids"]), body["frames"][middle])
    shot(page, artifacts, "training-gpt.png")

    page.click("#train-play")  # from the middle to the end, then it stops
    page.wait_for_function(
        "step => document.getElementById('train-map').dataset.step === String(step)"
        " && document.getElementById('train-play').getAttribute('aria-pressed') === 'false'",
        arg=steps[-1],
        timeout=30_000,
    )
    assert_drawn_as(drawn(page, body["ids"]), body["frames"][-1])


def table_pixels(page) -> list[list[int]]:
    """The distinct colours of the learned table's canvas."""
    return page.evaluate(
        """() => {
            const canvas = document.getElementById('train-table');
            const { width, height } = canvas;
            const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
            const seen = new Set();
            for (let i = 0; i < data.length; i += 4) {
                seen.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
            }
            return [...seen];
        }"""
    )


def test_the_bigram_table_morphs_from_uniform_to_the_empirical_one(page, api, artifacts):
    body = api.get(f"/v1/models/{BIGRAM}/timeline", params={"tokens": "e"}).json()
    steps = [s["step"] for s in body["steps"]]
    open_training(page, BIGRAM)
    assert page.is_visible("#train-tables")
    go_to(page, 0, 0)
    page.wait_for_function("() => document.getElementById('train-table').dataset.step === '0'")
    assert len(table_pixels(page)) == 1  # zeros init: every cell the same colour
    assert "KL" in page.get_attribute("#train-curves", "aria-label")

    go_to(page, len(steps) - 1, steps[-1])
    page.wait_for_function(
        "step => document.getElementById('train-table').dataset.step === String(step)",
        arg=steps[-1],
    )
    assert len(table_pixels(page)) > 50
    label = page.get_attribute("#train-curves", "aria-label")
    assert f"KL {body['steps'][-1]['kl']:.3f} nats" in label
    shot(page, artifacts, "training-bigram.png")


def test_a_model_without_a_timeline_says_how_to_get_one(large_vocab_page, page_log):
    page_log.allow("the server responded with a status of 404")  # the timeline asked for
    open_view = large_vocab_page
    assert open_view.input_value("#model") == LARGE_BIGRAM  # the one model there
    open_view.click("#tab-train")
    open_view.wait_for_selector("#train-notice:not([hidden])")
    assert "has no training timeline" in open_view.text_content("#train-notice")
    assert "retrain the model" in open_view.text_content("#train-notice")
    assert open_view.is_hidden("#train-body")
