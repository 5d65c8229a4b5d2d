// What the attention and logit-lens views share: asking the API about the prompt as it is
// typed, and saying why a bigram has nothing to show.

import { ApiError, el, postJSON, showError } from "./api.js";

export class ForwardPassView {
  /**
   * @param {object} app   the playground: `model()`, `models`, `context()`, `pickModel(id)`
   * @param {string} name  the view's element ids: view-{name}, {name}-body, {name}-notice,
   *                       {name}-error, {name}-summary, {name}-readout
   * @param {string} path  the API operation it draws
   */
  constructor(app, name, path) {
    this.app = app;
    this.path = path;
    this.panel = document.getElementById(`view-${name}`);
    this.body = document.getElementById(`${name}-body`);
    this.notice = document.getElementById(`${name}-notice`);
    this.error = document.getElementById(`${name}-error`);
    this.summary = document.getElementById(`${name}-summary`);
    this.readout = document.getElementById(`${name}-readout`);
    this.result = null;
    this.asked = null; // the request body `result` answers, as JSON
    this.pending = null;
    this.timer = null;
  }

  /** Refresh soon: the prompt is being typed. */
  refreshSoon() {
    if (this.panel.hidden) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), 300);
  }

  async refresh() {
    clearTimeout(this.timer);
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    if (model.kind !== "gpt") {
      this.explainBigram(model);
      return;
    }
    this.notice.hidden = true;
    const body = this.request(model, this.app.context());
    const asked = JSON.stringify(body);
    if (this.result && this.asked === asked) return;
    this.pending?.abort();
    const pending = (this.pending = new AbortController());
    this.panel.setAttribute("aria-busy", "true");
    try {
      const result = await postJSON(this.path, body, pending.signal);
      if (pending.signal.aborted) return;
      showError(this.error, "");
      this.asked = asked;
      this.result = result;
      this.body.hidden = false; // first: the view draws at the size it is shown
      this.show(result);
    } catch (err) {
      if (err.name === "AbortError") return;
      this.result = null;
      this.body.hidden = true;
      showError(this.error, err instanceof ApiError ? err.message : String(err));
    } finally {
      if (this.pending === pending) this.panel.removeAttribute("aria-busy");
    }
  }

  /** Only a GPT has a forward pass to look inside: say why, and offer the GPTs loaded. */
  explainBigram(model) {
    this.result = null;
    this.forget();
    this.body.hidden = true;
    showError(this.error, "");
    const gpts = this.app.models.filter((m) => m.kind === "gpt");
    this.notice.replaceChildren(
      `${model.id} is a bigram model: ${this.bigramHasNone} ` +
        (gpts.length ? `${this.gptsHave}: ` : "No GPT model is loaded."),
      ...gpts.map((m) =>
        el("button", { type: "button", class: "inline", text: `show ${m.id}`, onclick: () => this.app.pickModel(m.id) }),
      ),
    );
    this.notice.hidden = false;
  }

  /** The arrow keys move the cursor a cell over the view's grid of `gridSize()` [rows, cols]. */
  key(event) {
    if (!this.result) return;
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const [rows, cols] = this.gridSize();
    const [i, j] = this.cursor ?? [0, 0];
    const clamp = (v, n) => Math.max(0, Math.min(n - 1, v));
    this.setCursor(clamp(i + move[0], rows), clamp(j + move[1], cols), true);
  }
}
