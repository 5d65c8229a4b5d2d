"""The playground's views of one forward pass, in Debian's Chromium against a real server of
the shipped models: the attention map and the logit lens, each checked against its API and
photographed into test-artifacts/browser/."""

from __future__ import annotations

import pytest

from tests.browser.pages import BIGRAM, GPT, pick_model, shot, visible

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = "ROMEO:\nBut soft, what light"
# Short enough for the whole grid to fit the panel (and the README's picture).
LENS_PROMPT = "ROMEO:\nBut soft, what"


def attention_readout(page) -> dict:
    data = page.eval_on_selector("#attn-readout", "e => ({...e.dataset})")
    return {key: float(value) if key == "weight" else int(value) for key, value in data.items()}


def hover_attention_cell(page, i: int, j: int) -> None:
    center = page.evaluate(
        "([i, j]) => document.getElementById('attn-map').cellCenter(i, j)", [i, j]
    )
    page.locator("#attn-map").hover(position=center)


def test_hovering_the_attention_map_shows_the_apis_weight(page, api, artifacts):
    page.fill("#prompt", PROMPT)
    page.click("#tab-attn")
    page.wait_for_selector(f"#attn-map[data-model='{GPT}'][data-tokens='{len(PROMPT)}']")
    expected = api.post("/v1/attention", json={"model": GPT, "text": PROMPT}).json()
    assert expected["tokens"] == list(PROMPT)

    page.select_option("#attn-layer", "2")
    page.select_option("#attn-head", "1")
    i, j = PROMPT.index("soft") + 3, PROMPT.index("soft")  # the t of "soft", reading its s
    hover_attention_cell(page, i, j)
    cell = attention_readout(page)
    assert (cell["layer"], cell["head"], cell["row"], cell["col"]) == (2, 1, i, j)
    weight = expected["layers"][2]["heads"][1][i][j]
    assert cell["weight"] == weight  # the very number the API gave, not a recomputation
    assert page.is_visible("#attn-tooltip")
    assert page.text_content("#attn-tooltip").startswith(f"t → s: {weight:.4f}")
    shot(page, artifacts, "attention.png")

    # The "all heads" grid: one small pattern per layer and head; a click shows that one large.
    thumbs = page.locator("#attn-grid button.thumb")
    assert thumbs.count() == expected["n_layer"] * expected["n_head"] == 16
    page.click("#attn-grid button[data-layer='3'][data-head='0']")
    assert page.input_value("#attn-layer") == "3" and page.input_value("#attn-head") == "0"
    assert (
        page.get_attribute("#attn-grid button[data-layer='3'][data-head='0']", "aria-pressed")
        == "true"
    )
    hover_attention_cell(page, len(PROMPT) - 1, 0)
    cell = attention_readout(page)
    assert cell["weight"] == expected["layers"][3]["heads"][0][len(PROMPT) - 1][0]

    # A later token is masked: its weight is 0 and the readout says why.
    hover_attention_cell(page, 2, 5)
    assert attention_readout(page)["weight"] == 0
    assert "masked" in page.text_content("#attn-readout")

    # From the keyboard: the arrow keys move the cursor over the cells.
    page.focus("#attn-map")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    cell = attention_readout(page)
    assert (cell["row"], cell["col"]) == (3, 6)


def test_the_logit_lens_grid_shows_each_cells_top_token(page, api, artifacts):
    page.fill("#prompt", LENS_PROMPT)
    page.click("#tab-lens")
    page.wait_for_selector(f"#lens-table[data-model='{GPT}'][data-positions='{len(LENS_PROMPT)}']")
    body = {"model": GPT, "text": LENS_PROMPT, "top_k": 5}
    expected = api.post("/v1/logit-lens", json=body).json()
    cells = page.eval_on_selector_all(
        "#lens-table td",
        "els => els.map(e => ({layer: Number(e.dataset.layer), t: Number(e.dataset.position),"
        " token: e.dataset.token, prob: Number(e.dataset.prob), text: e.textContent,"
        " hit: e.classList.contains('hit')}))",
    )
    layers = expected["layers"]
    assert len(cells) == len(layers) * len(LENS_PROMPT)
    # The output layer on top, the embeddings at the bottom; positions left to right.
    assert [c["layer"] for c in cells[:: len(LENS_PROMPT)]] == [4, 3, 2, 1, 0]
    for cell in cells:
        top = layers[cell["layer"]]["predictions"][cell["t"]][0]
        assert (cell["token"], cell["prob"]) == (top["token"], top["prob"])
        assert cell["text"] == visible(top["token"])
        assert cell["hit"] == (LENS_PROMPT[cell["t"] + 1 : cell["t"] + 2] == top["token"])
    assert any(cell["hit"] for cell in cells)  # the model does guess some of the prompt

    page.hover("#lens-table td[data-row='0'][data-position='9']")  # after "ROMEO:\nBut "
    readout = page.text_content("#lens-readout")
    listed = layers[4]["predictions"][9]
    assert readout.startswith(f"After {visible(LENS_PROMPT[9])} (position 9), block 3 (output): ")
    assert [visible(p["token"]) for p in listed] == page.eval_on_selector_all(
        "#lens-readout strong", "els => els.map(e => e.textContent)"
    )
    shot(page, artifacts, "logit-lens.png")

    # From the keyboard: down one layer (block 2) and on one position.
    page.focus("#lens-table")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    shown = page.eval_on_selector("#lens-readout", "e => ({...e.dataset})")
    assert (shown["layer"], shown["position"]) == ("3", "10")
    assert shown["token"] == layers[3]["predictions"][10][0]["token"]


@pytest.mark.parametrize(
    ("tab", "notice"), [("#tab-attn", "#attn-notice"), ("#tab-lens", "#lens-notice")]
)
def test_the_bigram_says_why_it_has_neither_view_and_offers_a_gpt(page, tab, notice):
    pick_model(page, BIGRAM)
    page.click(tab)
    assert "bigram model" in page.text_content(notice)
    page.click(f"{notice} button")
    assert page.input_value("#model") == GPT
    page.wait_for_selector(f"{notice}[hidden]", state="attached")


def test_bigram_neighbours_are_compared_as_distributions(page, api):
    pick_model(page, BIGRAM)
    page.click("#tab-embed")
    page.wait_for_selector(f"#scatter[data-model='{BIGRAM}']")
    assert page.input_value("#neighbour-metric") == "jensen_shannon"
    page.fill("#neighbour-token", "a")
    page.click("#neighbour-form button[type=submit]")
    page.wait_for_selector("#neighbours li")
    expected = api.post("/v1/neighbours", json={"model": BIGRAM, "token": "a", "k": 8}).json()
    listed = page.eval_on_selector_all("#neighbours li", "els => els.map(e => e.dataset.token)")
    assert listed == [n["token"] for n in expected["neighbours"]]
    assert page.text_content("#neighbours-title") == "Neighbours of a (jensen_shannon)"
    assert page.text_content("#neighbours li .score").startswith("distance ")
