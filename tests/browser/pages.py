"""What the browser tests do to the playground page, and how they read it."""

from __future__ import annotations

BIGRAM, GPT = "bigram-char", "gpt-char"
LARGE_BIGRAM = "bigram-cjk"  # 4,140 tokens: its table is shown a window at a time
VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def visible(token: str) -> str:
    """A token as the page labels it (api.js `showToken`, for the characters these models have)."""
    return "".join(VISIBLE.get(ch, ch) for ch in token)


def shot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / name), full_page=True)


def pick_model(page, model_id: str) -> None:
    page.select_option("#model", model_id)


def wait_for_bars(page, model_id: str, context: str) -> None:
    page.wait_for_function(
        "([model, context]) => { const bars = document.getElementById('bars');"
        " return bars.dataset.model === model && bars.dataset.context === context; }",
        arg=[model_id, context],
    )


def readout(page) -> dict:
    """The heatmap cell the readout shows: its place in the window, its token ids, P(j | i)."""
    data = page.eval_on_selector("#heatmap-readout", "e => ({...e.dataset})")
    return {
        "row": int(data["row"]), "col": int(data["col"]),
        "row_id": int(data["rowId"]), "col_id": int(data["colId"]),
        "prob": float(data["prob"]),
        "empirical": float(data["empirical"]) if data["empirical"] else None,
    }  # fmt: skip


def hover_cell(page, i: int, j: int) -> None:
    center = page.evaluate(
        "([i, j]) => document.getElementById('heatmap').cellCenter(i, j)", [i, j]
    )
    page.locator("#heatmap").hover(position=center)  # scrolls it into view first


def wait_for_window(page, row_start: int, col_start: int) -> None:
    page.wait_for_function(
        "([r, c]) => { const d = document.getElementById('heatmap').dataset;"
        " return d.rowStart === String(r) && d.colStart === String(c); }",
        arg=[row_start, col_start],
    )


def bars(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#bars .bar",
        """els => els.map(e => ({
            id: Number(e.dataset.id), token: e.dataset.token, prob: Number(e.dataset.prob),
            label: e.querySelector('.bar-token').textContent,
            width: parseFloat(e.querySelector('.bar-fill:not(.empirical)').style.width),
            empirical: e.querySelector('.empirical-value')?.textContent ?? null,
        }))""",
    )
