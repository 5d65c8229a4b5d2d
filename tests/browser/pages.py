"""What the browser tests do to the playground page, and how they read it."""

from __future__ import annotations

BIGRAM, GPT = "bigram-char", "gpt-char"
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
