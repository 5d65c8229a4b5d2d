// Next-token view: the top-k next-token probabilities after the prompt, as clickable bars.

import { el, formatProb, postJSON, showError, showToken } from "./api.js";

export class NextTokenView {
  /**
   * @param {object} app  `app.model()` is the selected model's info, `app.context()` the prompt,
   *                      `app.appendToPrompt(text)` adds a token to it.
   */
  constructor(app) {
    this.app = app;
    this.list = document.getElementById("bars");
    this.topK = document.getElementById("next-k");
    this.summary = document.getElementById("next-summary");
    this.legend = document.getElementById("next-legend");
    this.error = document.getElementById("next-error");
    this.panel = document.getElementById("view-next");
    this.pending = null;
    this.timer = null;
    this.topK.addEventListener("change", () => this.refresh());
  }

  /** Refresh soon: the prompt is being typed. */
  refreshSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 200);
  }

  async refresh() {
    clearTimeout(this.timer);
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    this.pending?.abort();
    const pending = (this.pending = new AbortController());
    const topK = Math.max(1, Math.min(100, Number.parseInt(this.topK.value, 10) || 15));
    const context = this.app.context();
    this.panel.setAttribute("aria-busy", "true");
    try {
      const body = await postJSON(
        "/v1/next-token",
        { model: model.id, context, top_k: topK },
        pending.signal,
      );
      if (pending.signal.aborted) return;
      showError(this.error, "");
      this.render(body, model);
      // What the bars show, for anyone waiting on them (the browser tests do).
      Object.assign(this.list.dataset, { model: model.id, context: body.context });
    } catch (err) {
      if (err.name === "AbortError") return;
      showError(this.error, err.message);
      this.list.replaceChildren();
      this.summary.textContent = "";
    } finally {
      if (this.pending === pending) this.panel.removeAttribute("aria-busy");
    }
  }

  render(body, model) {
    const rows = body.distribution;
    const hasEmpirical = rows.some((row) => row.empirical_prob !== undefined && row.empirical_prob !== null);
    this.legend.hidden = !hasEmpirical;
    const top = Math.max(...rows.map((r) => Math.max(r.prob, r.empirical_prob ?? 0)), 1e-12);
    const last = model.kind === "bigram" ? lastCharacter(body.context) : null;
    const after = body.context === "" ? "the start" : last !== null ? `“${showToken(last)}”` : "the prompt";
    const shown = rows.reduce((sum, r) => sum + r.prob, 0);
    this.summary.textContent =
      `After ${after}: entropy ${body.entropy.toFixed(3)} nats; ` +
      `these ${rows.length} tokens hold ${formatProb(shown)} of the probability.`;
    this.list.replaceChildren(
      ...rows.map((row) => {
        const label = showToken(row.token);
        const empirical = hasEmpirical ? row.empirical_prob : null;
        const description =
          `${label}: ${formatProb(row.prob)}` +
          (empirical !== null ? `, empirical ${formatProb(empirical)}` : "") +
          ". Append it to the prompt.";
        return el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "bar",
              "aria-label": description,
              title: `Append ${label} to the prompt`,
              dataset: { id: row.id, token: row.token, prob: row.prob },
              onclick: () => this.app.appendToPrompt(row.token),
            },
            el("span", { class: "bar-token", text: label }),
            el(
              "span",
              { class: "bar-track" },
              barFill("bar-fill", row.prob / top),
              empirical !== null ? barFill("bar-fill empirical", empirical / top) : null,
            ),
            el(
              "span",
              { class: "bar-value" },
              el("span", { text: formatProb(row.prob) }),
              empirical !== null ? el("span", { class: "empirical-value", text: formatProb(empirical) }) : null,
            ),
          ),
        );
      }),
    );
  }
}

function barFill(className, fraction) {
  const fill = el("span", { class: className });
  fill.style.width = `${Math.max(0.5, fraction * 100)}%`;
  return fill;
}

function lastCharacter(text) {
  const chars = Array.from(text);
  return chars.length ? chars[chars.length - 1] : null;
}
