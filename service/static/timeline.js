// Training view: the model's training timeline (GET /v1/models/{id}/timeline) played back.
// A step slider and a play button move the token map from step 0 to the end of training, with
// the chosen token's neighbours at that step; for a bigram, its table beside the training
// split's; below, the loss curve (and a bigram's distance to the empirical table) marking
// the step.

import { ApiError, el, formatProb, getJSON, readToken, showError, showToken } from "./api.js";
import { sizedCanvas, viridis } from "./heatmap.js";

// How long playing spends moving from one recorded step to the next.
const STEP_MILLISECONDS = 700;
// Past this many points only the chosen token and its neighbours are labelled.
const LABELLED_POINTS = 120;
const NEIGHBOURS = 8;
const SERIES = {
  train_loss: ["train loss", "#3451b2"],
  val_loss: ["val loss", "#e8a33d"],
  tv_weighted: ["total variation (weighted)", "#0f8a5f"],
  kl: ["KL, nats", "#b3261e"],
};
// The curves' panels: the losses, and a bigram's distances to the empirical table, which fall
// by orders of magnitude (drawn on a log scale).
const PANELS = [
  { keys: ["train_loss", "val_loss"], log: false },
  { keys: ["tv_weighted", "kl"], log: true, bigram: true },
];
const SMALLEST = 1e-6;

const timelinePath = (modelId) => `/v1/models/${encodeURIComponent(modelId)}/timeline`;
const lerp = (a, b, f) => a + (b - a) * f;

/** The extent of some points, [x0, x1, y0, y1]. */
function extent(xs, ys) {
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (let i = 0; i < xs.length; i++) {
    x0 = Math.min(x0, xs[i]);
    x1 = Math.max(x1, xs[i]);
    y0 = Math.min(y0, ys[i]);
    y1 = Math.max(y1, ys[i]);
  }
  return [x0, x1, y0, y1];
}

export class TimelineView {
  constructor(app) {
    this.app = app;
    const $ = (id) => document.getElementById(id);
    this.panel = $("view-train");
    this.caption = $("train-caption");
    this.notice = $("train-notice");
    this.error = $("train-error");
    this.body = $("train-body");
    this.slider = $("train-step");
    this.stepLabel = $("train-step-label");
    this.playButton = $("train-play");
    this.map = $("train-map");
    this.mapWrap = $("train-map-wrap");
    this.tables = $("train-tables");
    this.learned = $("train-table");
    this.empirical = $("train-empirical");
    this.curves = $("train-curves");
    this.tokenInput = $("train-token");
    this.neighbourTitle = $("train-neighbours-title");
    this.neighbourList = $("train-neighbours");
    this.timelines = new Map(); // "model?token" -> timeline, or ApiError
    this.tableCache = new Map(); // "model@step" -> table (a bigram's)
    this.timeline = null;
    this.position = 0; // the frame shown: fractional while playing
    this.playing = null;
    this.positions = new Map(); // token id -> where it is drawn

    this.slider.addEventListener("input", () => {
      this.stop();
      this.show(Number(this.slider.value));
    });
    this.playButton.addEventListener("click", () => (this.playing ? this.stop() : this.play()));
    $("train-token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.refresh();
    });
    new ResizeObserver(() => this.timeline && !this.panel.hidden && this.draw()).observe(this.mapWrap);
    // The browser tests read where a token is drawn.
    this.map.pointPosition = (id) => this.positions.get(id) ?? null;
  }

  token() {
    return readToken(this.tokenInput.value);
  }

  async refresh() {
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    const token = this.token();
    const key = `${model.id}?${token}`;
    if (!this.timelines.has(key)) {
      this.caption.textContent = "Loading the training timeline…";
      this.panel.setAttribute("aria-busy", "true");
      try {
        const params = new URLSearchParams({ k: NEIGHBOURS });
        if (token !== "") params.set("tokens", token);
        this.timelines.set(key, await getJSON(`${timelinePath(model.id)}?${params}`));
      } catch (err) {
        if (!(err instanceof ApiError) || err.status >= 500 || err.status === 0) {
          this.caption.textContent = "";
          showError(this.error, err.message);
          return; // not cached: try again next time
        }
        this.timelines.set(key, err);
      } finally {
        this.panel.removeAttribute("aria-busy");
      }
      if (this.app.model()?.id !== model.id || this.token() !== token) return;
    }
    const timeline = this.timelines.get(key);
    this.notice.hidden = true;
    showError(this.error, "");
    if (timeline instanceof ApiError) {
      this.explain(model, timeline);
      return;
    }
    const fresh = this.timeline?.model !== timeline.model;
    this.timeline = timeline;
    this.body.hidden = false;
    this.tables.hidden = timeline.kind !== "bigram";
    this.slider.max = String(timeline.steps.length - 1);
    if (fresh) {
      this.stop();
      this.position = timeline.steps.length - 1;
      this.slider.value = this.slider.max;
    }
    this.describe();
    this.map.dataset.model = model.id;
    await this.show(this.position);
  }

  /** No timeline (a 404 that says how to get one), or a token it cannot show (a 400). */
  explain(model, err) {
    if (err.status === 404) {
      this.timeline = null;
      this.body.hidden = true;
      this.caption.textContent = "";
      this.notice.textContent = err.message;
      this.notice.hidden = false;
      delete this.map.dataset.model;
    } else {
      showError(this.error, err.message);
    }
  }

  describe() {
    const t = this.timeline;
    const what = t.kind === "bigram"
      ? "its rows of P(next | current), as square roots (nearby rows predict alike)"
      : "its token embeddings";
    const tokens = t.ids.length === t.vocab_size
      ? `all ${t.ids.length} tokens`
      : `the ${t.ids.length} most frequent of its ${t.vocab_size.toLocaleString("en")} tokens`;
    this.caption.textContent =
      `${t.model} at ${t.steps.length} steps of its training, from step 0 (before any update) ` +
      `to ${t.steps.at(-1).step}: ${what}, ${tokens}, each step on its own two principal ` +
      "axes, turned onto the next step's so that the points move instead of flipping. " +
      `Each frame is scaled to fit. The checkpoint holds step ${t.checkpoint_step}.`;
  }

  // -- moving through the steps ---------------------------------------------------------------

  async show(position) {
    this.position = position;
    const index = Math.round(position);
    const step = this.timeline.steps[index];
    this.slider.value = String(index);
    this.stepLabel.textContent = `step ${step.step.toLocaleString("en")} · val loss ${step.val_loss.toFixed(3)}`;
    this.map.dataset.step = String(step.step);
    this.listNeighbours(index);
    this.draw();
    if (this.timeline.kind === "bigram") await this.drawTables(index);
  }

  play() {
    const t = this.timeline;
    if (!t) return;
    if (Math.round(this.position) >= t.steps.length - 1) this.position = 0;
    this.playButton.textContent = "❚❚ Pause";
    this.playButton.setAttribute("aria-pressed", "true");
    const startedAt = performance.now();
    const from = this.position;
    const tick = (now) => {
      if (!this.playing) return;
      const position = Math.min(t.steps.length - 1, from + (now - startedAt) / STEP_MILLISECONDS);
      this.show(position);
      if (position >= t.steps.length - 1) this.stop();
      else this.playing = requestAnimationFrame(tick);
    };
    this.playing = requestAnimationFrame(tick);
  }

  stop() {
    if (this.playing) cancelAnimationFrame(this.playing);
    this.playing = null;
    this.playButton.textContent = "▶ Play";
    this.playButton.setAttribute("aria-pressed", "false");
  }

  listNeighbours(index) {
    const query = this.timeline.neighbours[0];
    if (!query) {
      this.neighbourTitle.textContent = "Neighbours";
      this.neighbourList.replaceChildren();
      return;
    }
    const step = this.timeline.steps[index].step;
    const bigram = this.timeline.kind === "bigram";
    this.neighbourTitle.textContent =
      `Nearest ${showToken(query.token)} at step ${step.toLocaleString("en")} ` +
      (bigram ? "(Jensen–Shannon distance of the next-token distributions)" : "(cosine)");
    this.neighbourList.replaceChildren(
      ...query.steps[index].map((n) =>
        el("li", { dataset: { id: n.id, token: n.token } },
          el("span", { class: "chip", text: showToken(n.token) }),
          el("span", { class: "score", text: `${bigram ? "distance" : "score"} ${n.score.toFixed(3)}` })),
      ),
    );
  }

  // -- drawing --------------------------------------------------------------------------------

  /** The map at `this.position`: between two recorded steps, the points part-way. */
  draw() {
    const t = this.timeline;
    const lower = Math.floor(this.position);
    const upper = Math.min(t.frames.length - 1, lower + 1);
    const f = this.position - lower;
    const [a, b] = [t.frames[lower], t.frames[upper]];
    const xs = a.x.map((x, i) => lerp(x, b.x[i], f));
    const ys = a.y.map((y, i) => lerp(y, b.y[i], f));
    const width = Math.max(260, this.mapWrap.clientWidth);
    const height = Math.round(Math.min(480, Math.max(260, width * 0.6)));
    const ctx = sizedCanvas(this.map, width, height);
    ctx.fillStyle = "#fbfcfe";
    ctx.fillRect(0, 0, width, height);

    const pad = 24;
    const [x0, x1, y0, y1] = extent(xs, ys);
    const scale = Math.min((width - 2 * pad) / (x1 - x0 || 1), (height - 2 * pad) / (y1 - y0 || 1));
    const left = (width - scale * (x1 - x0)) / 2;
    const top = (height - scale * (y1 - y0)) / 2;
    this.positions = new Map(
      t.ids.map((id, i) => [id, { x: left + (xs[i] - x0) * scale, y: top + (y1 - ys[i]) * scale }]),
    );

    const query = t.neighbours[0];
    const index = Math.round(this.position);
    const found = new Set(query ? query.steps[index].map((n) => n.id) : []);
    const labelAll = t.ids.length <= LABELLED_POINTS;
    ctx.font = "12px ui-monospace, monospace";
    ctx.textBaseline = "middle";
    t.ids.forEach((id, i) => {
      if (found.has(id) || id === query?.id) return;
      const { x, y } = this.positions.get(id);
      ctx.fillStyle = found.size ? "rgba(52, 81, 178, 0.45)" : "#3451b2";
      ctx.beginPath();
      ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
      ctx.fill();
      if (labelAll) ctx.fillText(showToken(t.tokens[i]), x + 4, y);
    });
    // The chosen token and its neighbours on top, labelled.
    const emphasised = [...found, ...(query ? [query.id] : [])];
    for (const id of emphasised) {
      const { x, y } = this.positions.get(id);
      const chosen = id === query.id;
      ctx.fillStyle = chosen ? "#e11d48" : "#111827";
      ctx.beginPath();
      ctx.arc(x, y, chosen ? 5 : 4, 0, 2 * Math.PI);
      ctx.fill();
      ctx.font = "bold 13px ui-monospace, monospace";
      const label = showToken(t.tokens[t.ids.indexOf(id)]);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
      ctx.strokeText(label, x + 6, y);
      ctx.fillText(label, x + 6, y);
    }
    this.drawCurves();
  }

  /** Losses against step (and a bigram's distances to the empirical table), the step marked. */
  drawCurves() {
    const t = this.timeline;
    const panels = PANELS.filter((panel) => !panel.bigram || t.kind === "bigram");
    const width = Math.max(260, this.mapWrap.clientWidth);
    const height = 190;
    const ctx = sizedCanvas(this.curves, width, height);
    const panelWidth = width / panels.length;
    const steps = t.steps.map((s) => s.step);
    const last = steps.at(-1) || 1;
    const index = Math.round(this.position);
    const at = lerp(steps[Math.floor(this.position)], steps[Math.ceil(this.position)], this.position % 1);
    ctx.font = "11px system-ui, sans-serif";
    panels.forEach(({ keys, log }, p) => {
      const [l, r, top, bottom] = [p * panelWidth + 44, (p + 1) * panelWidth - 10, 24, height - 22];
      const scaled = (v) => (log ? Math.log10(Math.max(v, SMALLEST)) : v);
      const values = keys.flatMap((k) => t.steps.map((s) => scaled(s[k])));
      const [lo, hi] = [Math.min(...values), Math.max(...values)];
      const X = (step) => l + ((r - l) * step) / last;
      const Y = (v) => bottom - ((bottom - top) * (scaled(v) - lo)) / (hi - lo || 1);
      const tick = (v) => (log ? (10 ** v).toPrecision(2) : v.toFixed(2));
      ctx.strokeStyle = "#d8dee9";
      ctx.lineWidth = 1;
      ctx.strokeRect(l, top, r - l, bottom - top);
      ctx.fillStyle = "#5b6475";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      ctx.fillText(tick(hi), l - 4, top);
      ctx.fillText(tick(lo), l - 4, bottom);
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.fillText(log ? "step (y on a log scale)" : "step", (l + r) / 2, bottom + 4);
      let legend = l;
      for (const key of keys) {
        const [label, colour] = SERIES[key];
        ctx.strokeStyle = ctx.fillStyle = colour;
        ctx.lineWidth = 2;
        ctx.beginPath();
        t.steps.forEach((s, i) => (i ? ctx.lineTo(X(s.step), Y(s[key])) : ctx.moveTo(X(s.step), Y(s[key]))));
        ctx.stroke();
        ctx.textAlign = "left";
        ctx.textBaseline = "bottom";
        ctx.fillText(`— ${label}`, legend, top - 4);
        legend += ctx.measureText(`— ${label}`).width + 12;
      }
      // The step shown: a line, and each curve's value at the nearest recorded step.
      ctx.strokeStyle = ctx.fillStyle = "#e11d48";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(X(at), top);
      ctx.lineTo(X(at), bottom);
      ctx.stroke();
      for (const key of keys) {
        ctx.beginPath();
        ctx.arc(X(steps[index]), Y(t.steps[index][key]), 3.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
    const step = t.steps[index];
    this.curves.setAttribute(
      "aria-label",
      `At step ${step.step}: train loss ${step.train_loss.toFixed(3)}, val loss ${step.val_loss.toFixed(3)}` +
        (t.kind === "bigram" ? `, total variation ${step.tv_weighted.toFixed(3)}, KL ${step.kl.toFixed(3)} nats` : ""),
    );
  }

  async tableAt(index) {
    const model = this.timeline.model;
    const step = this.timeline.steps[index].step;
    const key = `${model}@${step}`;
    if (!this.tableCache.has(key)) {
      const params = new URLSearchParams({ step });
      this.tableCache.set(key, getJSON(`${timelinePath(model)}/table?${params}`));
    }
    return this.tableCache.get(key);
  }

  /** A bigram's table at the step shown, beside the training split's, on one colour scale. */
  async drawTables(index) {
    const timeline = this.timeline;
    let table;
    try {
      table = await this.tableAt(index);
    } catch (err) {
      this.tableCache.delete(`${timeline.model}@${timeline.steps[index].step}`);
      showError(this.error, err.message);
      return;
    }
    if (this.timeline !== timeline || Math.round(this.position) !== index) return;
    // Ask for the next steps now: playing must not wait for them.
    for (const next of [index + 1, index + 2]) if (next < timeline.steps.length) this.tableAt(next).catch(() => {});
    const target = table.empirical ?? (await this.tableAt(timeline.steps.length - 1)).probs;
    let max = 0;
    for (const row of target) for (const p of row) max = Math.max(max, p);
    const side = Math.max(120, Math.min(300, (this.mapWrap.clientWidth - 24) / 2));
    this.paint(this.learned, table.probs, side, max);
    this.paint(this.empirical, target, side, max);
    this.learned.dataset.step = String(table.step);
    this.learned.setAttribute("aria-label", `The bigram's table P(next | current) at step ${table.step}`);
    document.getElementById("train-table-max").textContent = formatProb(max);
  }

  paint(canvas, values, side, max) {
    const n = values.length;
    const cells = document.createElement("canvas");
    cells.width = cells.height = n;
    const cellsCtx = cells.getContext("2d");
    const image = cellsCtx.createImageData(n, n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const [r, g, b] = viridis(Math.sqrt(values[i][j] / max));
        image.data.set([r, g, b, 255], (i * n + j) * 4);
      }
    }
    cellsCtx.putImageData(image, 0, 0);
    const ctx = sizedCanvas(canvas, side, side);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(cells, 0, 0, side, side);
  }
}
