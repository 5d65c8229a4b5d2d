"""The playground in Debian's Chromium against a real server with the shipped models.

Each view is checked against the API it draws, and photographed into test-artifacts/browser/
(`make screenshots` copies them to docs/screenshots/ for the README).
"""

from __future__ import annotations

import json

import pytest

from tests.browser.pages import (
    BIGRAM,
    GPT,
    LARGE_BIGRAM,
    bars,
    hover_cell,
    pick_model,
    readout,
    shot,
    visible,
    wait_for_bars,
    wait_for_window,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# -- the page -----------------------------------------------------------------------------


def test_the_page_lists_the_shipped_models_and_every_control_has_a_label(page, api):
    ids = [model["id"] for model in api.get("/v1/models").json()["data"]]
    assert page.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ids
    assert page.input_value("#model") == GPT  # a GPT first: it writes the better text
    assert "818,048 parameters" in page.text_content("#model-info")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, canvas[tabindex]')]
            .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                          && !el.textContent.trim())
            .map(el => el.id || el.outerHTML)"""
    )
    assert unlabelled == []


def test_the_view_tabs_work_from_the_keyboard(page):
    page.focus("#tab-next")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-table", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-table"
    assert page.is_visible("#view-table") and page.is_hidden("#view-next")
    page.keyboard.press("End")
    assert page.evaluate("document.activeElement.id") == "tab-embed"
    assert page.is_visible("#view-embed")
    page.keyboard.press("ArrowRight")  # wraps around
    assert page.evaluate("document.activeElement.id") == "tab-next"
    assert page.is_visible("#view-next") and page.is_hidden("#view-embed")


SSE_CHUNKS = [
    # Events split anywhere, CRLF halves in different chunks, a comment, a two-line data field.
    'event: token\ndata: {"index": 0, "id": 1, "text": " "}\n\nevent: tok',
    "en\r",
    '\ndata: {"index": 1, "id": 2,\r\ndata:  "text": "\\n"}\r\n\r',
    "\n: keep-alive\n\n",
    'event: done\ndata: {"text": " \\n"}\n',
    '\nevent: token\ndata: {"index": 2',  # cut off: never dispatched
]


def test_the_event_stream_parser_handles_any_chunking(page):
    events = page.evaluate(
        """async (chunks) => {
            const { serverSentEvents } = await import("/static/api.js");
            const encoder = new TextEncoder();
            const body = new ReadableStream({ start(controller) {
                for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
                controller.close();
            } });
            const events = [];
            for await (const event of serverSentEvents(new Response(body))) events.push(event);
            return events;
        }""",
        SSE_CHUNKS,
    )
    assert [(e["event"], json.loads(e["data"])) for e in events] == [
        ("token", {"index": 0, "id": 1, "text": " "}),
        ("token", {"index": 1, "id": 2, "text": "\n"}),
        ("done", {"text": " \n"}),
    ]


def test_tokens_are_shown_with_visible_whitespace(page):
    shown = page.evaluate(
        """async (tokens) => {
            const { showToken, readToken } = await import("/static/api.js");
            return tokens.map((t) => [showToken(t), readToken(showToken(t))]);
        }""",
        [" ", "\n", "\t", " the", "a\u0007", ""],
    )
    assert shown == [["␣", " "], ["⏎", "\n"], ["⇥", "\t"], ["␣the", " the"],
                     ["a\u2407", "a\u2407"], ["∅", "∅"]]  # fmt: skip


# -- next-token view ----------------------------------------------------------------------


def test_next_token_bars_are_the_apis_distribution_and_a_click_appends(page, api, artifacts):
    prompt = "ROMEO:\nWhat"
    pick_model(page, BIGRAM)
    page.fill("#prompt", prompt)
    page.fill("#next-k", "12")
    page.press("#next-k", "Tab")  # `change`: the view asks again with the new k
    wait_for_bars(page, BIGRAM, prompt)
    page.wait_for_function("document.querySelectorAll('#bars .bar').length === 12")

    def check(context: str) -> list[dict]:
        body = {"model": BIGRAM, "context": context, "top_k": 12}
        expected = api.post("/v1/next-token", json=body).json()["distribution"]
        shown = bars(page)
        assert [b["id"] for b in shown] == [e["id"] for e in expected]
        assert [b["token"] for b in shown] == [e["token"] for e in expected]
        assert [b["label"] for b in shown] == [visible(e["token"]) for e in expected]
        for bar, entry in zip(shown, expected, strict=True):
            assert bar["prob"] == pytest.approx(entry["prob"], rel=1e-12)
            assert bar["empirical"] is not None  # the bigram shows its training counts too
        widths = [b["width"] for b in shown]
        assert widths == sorted(widths, reverse=True) and widths[0] > 90
        return shown

    shown = check(prompt)
    shot(page, artifacts, "next-token.png")

    page.click("#bars .bar >> nth=1")
    new_prompt = prompt + shown[1]["token"]
    assert page.input_value("#prompt") == new_prompt
    wait_for_bars(page, BIGRAM, new_prompt)
    check(new_prompt)


# -- bigram table view --------------------------------------------------------------------


def test_bigram_heatmap_hover_and_arrow_keys_show_p_j_given_i(page, api, artifacts):
    page.click("#tab-table")
    # The GPT has no table: the view says so (without asking) and offers the bigram.
    notice = page.text_content("#table-notice")
    assert "Only bigram models have one" in notice and GPT in notice
    page.click("#table-notice button")
    assert page.input_value("#model") == BIGRAM
    page.wait_for_selector("#heatmap[data-model='bigram-char']")

    # 65 tokens fit one response: the whole table, in token id order, with no window controls.
    table = api.get(f"/v1/models/{BIGRAM}/bigram-table").json()
    tokens = table["rows"]["tokens"]
    assert table["cols"]["tokens"] == tokens and len(tokens) == table["vocab_size"]
    assert page.is_hidden("#table-window")
    i, j = tokens.index("q"), tokens.index("u")
    hover_cell(page, i, j)

    cell = readout(page)
    assert (cell["row"], cell["col"]) == (i, j) == (cell["row_id"], cell["col_id"])
    prob = cell["prob"]
    assert prob == pytest.approx(table["probs"][i][j], rel=1e-12) and prob > 0.5  # u after q
    assert cell["empirical"] == pytest.approx(table["empirical"][i][j], rel=1e-12)
    assert page.text_content("#heatmap-readout").startswith("P(next = u | current = q) = ")
    assert page.is_visible("#heatmap-tooltip")
    assert page.text_content("#heatmap-tooltip").startswith("P(u | q) = ")
    shot(page, artifacts, "bigram-table.png")

    page.focus("#heatmap")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    cell = readout(page)
    assert (cell["row"], cell["col"]) == (i + 1, j + 1)
    assert cell["prob"] == pytest.approx(table["probs"][i + 1][j + 1], rel=1e-12)
    expected = f"P(next = {visible(tokens[j + 1])} | current = {visible(tokens[i + 1])})"
    assert page.text_content("#heatmap-readout").startswith(expected)


def test_a_4140_token_heatmap_draws_a_window_that_pages_and_finds_tokens(
    large_vocab_page, large_vocab_api, artifacts
):
    page, api = large_vocab_page, large_vocab_api
    assert page.input_value("#model") == LARGE_BIGRAM
    page.click("#tab-table")
    page.wait_for_selector(f"#heatmap[data-model='{LARGE_BIGRAM}']")
    assert page.is_visible("#table-window") and page.input_value("#table-order") == "frequency"
    path = f"/v1/models/{LARGE_BIGRAM}/bigram-table?order=frequency&rows=64&cols=64"

    def window(row_start: int, col_start: int) -> dict:
        table = api.get(f"{path}&row_start={row_start}&col_start={col_start}").json()
        assert len(table["rows"]["ids"]) == len(table["cols"]["ids"]) == 64
        return table

    def check(cell: dict, table: dict) -> None:
        i, j = cell["row"], cell["col"]
        rows, cols = table["rows"], table["cols"]
        assert (cell["row_id"], cell["col_id"]) == (rows["ids"][i], cols["ids"][j])
        assert cell["prob"] == pytest.approx(table["probs"][i][j], rel=1e-12)
        assert cell["empirical"] is None  # too many tokens for the trainer to keep counts
        current, following = rows["tokens"][i], cols["tokens"][j]
        assert page.text_content("#heatmap-readout").startswith(
            f"P(next = {following} | current = {current}) = "
        )

    # The 64 most frequent tokens by 64; hover shows the API's P(j | i).
    top = window(0, 0)
    hover_cell(page, 5, 7)
    cell = readout(page)
    assert (cell["row"], cell["col"]) == (5, 7)
    check(cell, top)
    tip = f"P({top['cols']['tokens'][7]} | {top['rows']['tokens'][5]}) = "
    assert page.is_visible("#heatmap-tooltip")
    assert page.text_content("#heatmap-tooltip").startswith(tip)
    assert "4,140 tokens, most frequent first" in page.text_content("#table-window-summary")
    shot(page, artifacts, "bigram-table-large.png")

    # The arrow keys move within the window, and on into the next one past its edge.
    page.focus("#heatmap")
    page.keyboard.press("End")
    assert readout(page)["col"] == 63
    page.keyboard.press("ArrowRight")
    wait_for_window(page, 0, 64)
    cell = readout(page)
    assert (cell["row"], cell["col"]) == (5, 0)
    check(cell, window(0, 64))
    page.keyboard.press("ArrowLeft")  # and back
    wait_for_window(page, 0, 0)
    assert (readout(page)["row"], readout(page)["col"]) == (5, 63)

    # The buttons page the rows.
    page.click("button[aria-label='Next rows']")
    wait_for_window(page, 64, 0)
    hover_cell(page, 0, 0)
    check(readout(page), window(64, 0))

    # A token found by its text: the window that holds it, the cursor on it.
    ranked = api.get(f"{path}&row_start=256&cols=1").json()["rows"]
    token, token_id = ranked["tokens"][44], ranked["ids"][44]  # rank 300
    page.fill("#table-find-token", token)
    page.click("#table-find button[type=submit]")
    wait_for_window(page, 256, 256)
    cell = readout(page)
    assert (cell["row_id"], cell["col_id"]) == (token_id, token_id)
    assert (cell["row"], cell["col"]) == (44, 44)
    check(cell, window(256, 256))


def test_a_4140_token_embedding_map_shows_a_page_and_then_more(large_vocab_page, large_vocab_api):
    page, api = large_vocab_page, large_vocab_api
    page.click("#tab-embed")
    page.wait_for_selector(f"#scatter[data-model='{LARGE_BIGRAM}']")
    first = api.get(f"/v1/models/{LARGE_BIGRAM}/embeddings").json()
    assert len(first["points"]) == 2048 and first["total"] == 4140
    assert "2,048 of the 4,140 rows of the bigram table" in page.text_content("#embed-caption")
    assert page.evaluate("document.getElementById('scatter').pointPosition(3000)") is None
    page.click("#embed-more")
    caption = "() => document.getElementById('embed-caption').textContent.includes('4,096 of')"
    page.wait_for_function(caption)
    assert page.text_content("#embed-more") == "Show 44 more"
    # A point of the second page is drawn and can be clicked for its neighbours.
    token = chr(0x4E00 + 3000)
    at = page.evaluate("document.getElementById('scatter').pointPosition(3000)")
    page.locator("#scatter").click(position=at)
    page.wait_for_selector("#neighbours li")
    assert page.input_value("#neighbour-token") == token
    body = {"model": LARGE_BIGRAM, "token": token, "k": 8}  # a bigram's default metric
    expected = api.post("/v1/neighbours", json=body).json()["neighbours"]
    listed = page.eval_on_selector_all("#neighbours li", "els => els.map(e => e.dataset.token)")
    assert listed == [n["token"] for n in expected]


# -- embedding view -----------------------------------------------------------------------


def test_clicking_a_token_in_the_embedding_map_lists_its_neighbours(page, api, artifacts):
    page.click("#tab-embed")
    page.wait_for_selector("#scatter[data-model='gpt-char']")
    projection = api.get(f"/v1/models/{GPT}/embeddings").json()
    x_share, y_share = (f"{100 * v:.1f}%" for v in projection["explained_variance"])
    caption = page.text_content("#embed-caption")
    assert f"x axis holds {x_share}" in caption and f"y axis {y_share}" in caption

    page.fill("#analogy-positive", "A, b")
    page.fill("#analogy-negative", "a")
    page.click("#analogy-form button[type=submit]")
    page.wait_for_selector("#analogy-results li")
    body = {"model": GPT, "positive": ["A", "b"], "negative": ["a"], "k": 5}
    expected = api.post("/v1/neighbours", json=body).json()["neighbours"]
    listed = page.eval_on_selector_all(
        "#analogy-results li", "els => els.map(e => e.dataset.token)"
    )
    assert listed == [n["token"] for n in expected]

    token_id = next(p["id"] for p in projection["points"] if p["token"] == "e")
    at = page.evaluate("id => document.getElementById('scatter').pointPosition(id)", token_id)
    page.locator("#scatter").click(position=at)
    page.wait_for_selector("#neighbours li")
    assert page.input_value("#neighbour-token") == "e"
    body = {"model": GPT, "token": "e", "k": 8, "metric": "cosine"}
    expected = api.post("/v1/neighbours", json=body).json()["neighbours"]
    listed = page.eval_on_selector_all("#neighbours li", "els => els.map(e => e.dataset.token)")
    assert listed == [n["token"] for n in expected]
    assert page.text_content("#neighbours-title") == "Neighbours of e (cosine)"

    shot(page, artifacts, "embeddings.png")

    # A listed neighbour is a button that asks for its own neighbours.
    first = page.eval_on_selector("#neighbours li", "e => e.dataset.token")
    page.click("#neighbours li >> nth=0 >> button")
    title = f"Neighbours of {visible(first)} (cosine)"
    page.wait_for_function(
        "t => document.getElementById('neighbours-title').textContent === t", arg=title
    )
    assert page.input_value("#neighbour-token") == visible(first)


# -- a phone-width window -----------------------------------------------------------------


def test_the_page_fits_a_phone_width_window(page, artifacts):
    page.set_viewport_size({"width": 390, "height": 844})
    pick_model(page, BIGRAM)
    for tab, ready in [
        # the bigram's bars once no refresh is under way: clicking the tab refreshes them, and
        # a bar that a refresh replaces between finding it and measuring it has no box
        ("#tab-next", "#view-next:not([aria-busy]) #bars[data-model='bigram-char'] .bar"),
        ("#tab-table", "#heatmap[data-model='bigram-char']"),
        ("#tab-embed", "#scatter[data-model='bigram-char']"),
    ]:
        page.click(tab)
        page.wait_for_selector(ready)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, tab
        box = page.locator(ready).first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, tab
    shot(page, artifacts, "phone-embeddings.png")
