// Embedding view: the token vectors' 2-D PCA projection as a labelled scatter plot, with the
// neighbours of a clicked token and an analogy box. A large vocabulary comes a page of points
// at a time (the PCA is fitted on all of it), and "show more" adds the next page.

import { el, postJSON, readToken, showError, showToken, tokenEmbeddings } from "./api.js";

const KINDS = [
  ["lower", /^\s*\p{Ll}/u, "#2563eb", "lowercase"],
  ["upper", /^\s*\p{Lu}/u, "#d9480f", "uppercase"],
  ["digit", /^\s*\p{N}/u, "#7c3aed", "digit"],
  ["space", /^\s+$/u, "#6b7280", "whitespace"],
  ["punct", /./u, "#0f8a5f", "punctuation and other"],
];

// Metrics whose scores are distances (nearest first).
const DISTANCES = ["euclidean", "jensen_shannon"];

function kindOf(token) {
  return KINDS.find(([, pattern]) => pattern.test(token)) ?? KINDS[KINDS.length - 1];
}

export class EmbeddingView {
  constructor(app) {
    this.app = app;
    this.panel = document.getElementById("view-embed");
    this.canvas = document.getElementById("scatter");
    this.wrap = document.getElementById("scatter-wrap");
    this.tooltip = document.getElementById("scatter-tooltip");
    this.caption = document.getElementById("embed-caption");
    this.error = document.getElementById("embed-error");
    this.body = document.getElementById("embed-body");
    this.tokenInput = document.getElementById("neighbour-token");
    this.kInput = document.getElementById("neighbour-k");
    this.metric = document.getElementById("neighbour-metric");
    this.results = document.getElementById("neighbours");
    this.resultsTitle = document.getElementById("neighbours-title");
    this.analogyResults = document.getElementById("analogy-results");
    this.analogyError = document.getElementById("analogy-error");
    this.analogyExcluded = document.getElementById("analogy-excluded");
    this.projections = new Map(); // model id -> projection, with the points of the pages fetched
    this.projection = null;
    this.selected = []; // ids drawn as the query
    this.found = []; // ids drawn as its neighbours
    this.positions = []; // of each point, in the order of projection.points
    this.index = new Map(); // token id -> its place in projection.points
    this.more = el("button", { type: "button", class: "inline", id: "embed-more", text: "Show more points", hidden: true, onclick: () => this.showMore() });
    this.caption.after(this.more);

    document.getElementById("neighbour-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.neighbours(readToken(this.tokenInput.value));
    });
    document.getElementById("analogy-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.analogy();
    });
    this.canvas.addEventListener("click", (event) => {
      const point = this.pointAt(event);
      if (point) this.neighbours(point.token);
    });
    this.canvas.addEventListener("mousemove", (event) => this.hover(event));
    this.canvas.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
    new ResizeObserver(() => this.projection && !this.panel.hidden && this.draw()).observe(this.wrap);
    // The browser tests click tokens by id.
    this.canvas.pointPosition = (id) => this.positions[this.index.get(id)];
    this.legend();
  }

  legend() {
    document.getElementById("scatter-legend").replaceChildren(
      ...KINDS.map(([name, , colour, label]) => {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = colour;
        return el("li", { dataset: { kind: name } }, swatch, label);
      }),
    );
  }

  async refresh() {
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    if (!this.projections.has(model.id)) {
      this.caption.textContent = "Projecting the token vectors…";
      this.more.hidden = true;
      try {
        const first = await tokenEmbeddings(model.id);
        this.projections.set(model.id, { ...first, pageSize: first.points.length });
      } catch (err) {
        this.caption.textContent = "";
        showError(this.error, err.message);
        return;
      }
      if (this.app.model()?.id !== model.id) return;
    }
    showError(this.error, "");
    const projection = this.projections.get(model.id);
    if (this.projection !== projection) {
      this.projection = projection;
      this.indexPoints();
      this.selected = [];
      this.found = [];
      this.results.replaceChildren();
      this.analogyResults.replaceChildren();
      this.resultsTitle.textContent = "Neighbours";
      showError(this.analogyError, "");
      this.analogyExcluded.textContent = "";
      // A bigram's rows are next-token distributions: compared as such by default.
      const distributions = this.metric.querySelector('option[value="jensen_shannon"]');
      distributions.disabled = model.kind !== "bigram";
      this.metric.value = model.kind === "bigram" ? "jensen_shannon" : "cosine";
      this.describe(model);
    }
    this.body.hidden = false;
    this.draw();
    this.canvas.dataset.model = model.id;
  }

  indexPoints() {
    const points = this.projection.points;
    this.ids = new Map(points.map((p) => [p.token, p.id]));
    this.index = new Map(points.map((p, i) => [p.id, i]));
  }

  describe(model) {
    const { points, total, explained_variance: share, next_offset: next } = this.projection;
    const [x, y] = share.map((v) => `${(v * 100).toFixed(1)}%`);
    const what = model.kind === "bigram" ? "rows of the bigram table" : "token embeddings";
    const shown = points.length === total
      ? `the ${total.toLocaleString("en")} ${what}`
      : `${points.length.toLocaleString("en")} of the ${total.toLocaleString("en")} ${what} ` +
        `(token ids 0 to ${(points.length - 1).toLocaleString("en")}; the axes are fitted on all)`;
    this.caption.textContent =
      `PCA of ${shown} of ${model.id}: ` +
      `the x axis holds ${x} of their variance, the y axis ${y}. Click a token for its neighbours.`;
    this.more.hidden = next === null;
    const left = total - points.length;
    this.more.textContent = `Show ${Math.min(left, this.projection.pageSize).toLocaleString("en")} more`;
  }

  /** Add the next page of points to the plot: the same axes, so they land where they belong. */
  async showMore() {
    const model = this.app.model();
    const projection = this.projection;
    if (!model || !projection || projection.next_offset === null) return;
    this.more.disabled = true;
    try {
      const page = await tokenEmbeddings(model.id, { offset: projection.next_offset, limit: projection.pageSize });
      projection.points = projection.points.concat(page.points);
      projection.next_offset = page.next_offset;
      if (this.projection !== projection) return;
      this.indexPoints();
      this.describe(model);
      this.draw();
    } catch (err) {
      showError(this.error, err.message);
    } finally {
      this.more.disabled = false;
    }
  }

  draw() {
    const points = this.projection.points;
    const width = Math.max(260, this.wrap.clientWidth);
    const height = Math.round(Math.min(560, Math.max(280, width * 0.72)));
    const ratio = window.devicePixelRatio || 1;
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    // One scale for both axes, so that distances on screen are distances in the projection.
    const pad = 22;
    const xs = points.map((p) => p.x);
    const ys = points.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const scale = Math.min((width - 2 * pad) / (x1 - x0 || 1), (height - 2 * pad) / (y1 - y0 || 1));
    const left = (width - scale * (x1 - x0)) / 2;
    const top = (height - scale * (y1 - y0)) / 2;
    this.positions = points.map((p) => ({ x: left + (p.x - x0) * scale, y: top + (y1 - p.y) * scale }));

    // Axes through the origin (the mean token vector).
    ctx.strokeStyle = "#d8dee9";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left + (0 - x0) * scale, 4);
    ctx.lineTo(left + (0 - x0) * scale, height - 4);
    ctx.moveTo(4, top + y1 * scale);
    ctx.lineTo(width - 4, top + y1 * scale);
    ctx.stroke();
    ctx.fillStyle = "#6b7280";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText("PC 1 →", width - 6, top + y1 * scale - 3);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText("↑ PC 2", left + (0 - x0) * scale + 4, 4);

    // The query and its neighbours, as places in `points` (a neighbour on a page not fetched
    // is listed, not drawn).
    const place = (ids) => ids.map((id) => this.index.get(id)).filter((i) => i !== undefined);
    const [selected, found] = [place(this.selected), place(this.found)];
    const emphasised = new Set([...selected, ...found]);
    const dim = emphasised.size > 0;
    // Past a few hundred tokens the labels would only hide each other: hover shows them.
    const labelled = points.length <= 400;
    const labelSize = 12;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    points.forEach((p, i) => {
      if (emphasised.has(i)) return;
      const { x, y } = this.positions[i];
      const colour = kindOf(p.token)[2];
      ctx.globalAlpha = dim ? 0.45 : 0.9;
      ctx.fillStyle = colour;
      ctx.beginPath();
      ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
      ctx.fill();
      if (labelled) {
        ctx.font = `${labelSize}px ui-monospace, monospace`;
        ctx.fillText(showToken(p.token), x + 4, y);
      }
    });
    ctx.globalAlpha = 1;
    // The query and its neighbours on top, joined by lines.
    for (const anchor of this.lines ? selected : []) {
      for (const hit of found) {
        ctx.strokeStyle = "rgba(255, 77, 109, 0.45)";
        ctx.beginPath();
        ctx.moveTo(this.positions[anchor].x, this.positions[anchor].y);
        ctx.lineTo(this.positions[hit].x, this.positions[hit].y);
        ctx.stroke();
      }
    }
    // Neighbours first, the query last: its label stays readable.
    const order = [...found.filter((i) => !selected.includes(i)), ...selected];
    for (const i of order) {
      const { x, y } = this.positions[i];
      const query = selected.includes(i);
      ctx.fillStyle = query ? "#e11d48" : "#111827";
      ctx.beginPath();
      ctx.arc(x, y, query ? 5 : 4, 0, 2 * Math.PI);
      ctx.fill();
      ctx.font = `bold ${labelSize + 2}px ui-monospace, monospace`;
      const label = showToken(points[i].token);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
      ctx.strokeText(label, x + 6, y);
      ctx.fillText(label, x + 6, y);
    }
  }

  pointAt(event) {
    if (!this.projection) return null;
    const box = this.canvas.getBoundingClientRect();
    const x = event.clientX - box.left;
    const y = event.clientY - box.top;
    let best = null;
    let bestDistance = 14 ** 2;
    this.positions.forEach((p, i) => {
      const d = (p.x - x) ** 2 + (p.y - y) ** 2;
      if (d < bestDistance) [best, bestDistance] = [i, d];
    });
    return best === null ? null : this.projection.points[best];
  }

  hover(event) {
    const point = this.pointAt(event);
    this.canvas.style.cursor = point ? "pointer" : "default";
    if (!point) {
      this.tooltip.hidden = true;
      return;
    }
    const { x, y } = this.positions[this.index.get(point.id)];
    this.tooltip.textContent = `${showToken(point.token)} (id ${point.id})`;
    this.tooltip.hidden = false;
    const left = Math.min(this.canvas.offsetLeft + x + 12, this.wrap.clientWidth - this.tooltip.offsetWidth - 4);
    this.tooltip.style.left = `${Math.max(0, left)}px`;
    this.tooltip.style.top = `${this.canvas.offsetTop + y + 12}px`;
  }

  async neighbours(token) {
    const model = this.app.model();
    if (!model || token === "") return;
    this.tokenInput.value = showToken(token);
    const k = Number.parseInt(this.kInput.value, 10) || 8;
    try {
      const body = await postJSON("/v1/neighbours", { model: model.id, token, k, metric: this.metric.value });
      showError(this.error, "");
      this.selected = [this.ids.get(token)].filter((id) => id !== undefined);
      this.lines = true;
      this.found = body.neighbours.map((n) => n.id);
      this.resultsTitle.textContent = `Neighbours of ${showToken(token)} (${body.query.metric})`;
      this.results.replaceChildren(...body.neighbours.map((n) => this.resultItem(n, body.query.metric)));
      this.draw();
    } catch (err) {
      showError(this.error, err.message);
    }
  }

  async analogy() {
    const model = this.app.model();
    if (!model) return;
    const parse = (id) =>
      document.getElementById(id).value.split(",").map((s) => readToken(s.trim())).filter((s) => s !== "");
    const positive = parse("analogy-positive");
    const negative = parse("analogy-negative");
    const k = Number.parseInt(document.getElementById("analogy-k").value, 10) || 5;
    try {
      const body = await postJSON("/v1/neighbours", { model: model.id, positive, negative, k });
      showError(this.analogyError, "");
      this.selected = [...positive, ...negative].map((t) => this.ids.get(t)).filter((id) => id !== undefined);
      this.lines = false; // an analogy's answers are near a sum, not near any one of its tokens
      this.found = body.neighbours.map((n) => n.id);
      this.analogyResults.replaceChildren(...body.neighbours.map((n) => this.resultItem(n, "cosine")));
      this.analogyExcluded.textContent = body.excluded?.length
        ? `Left out, as the query's own: ${body.excluded.map(showToken).join(", ")}`
        : "";
      this.draw();
    } catch (err) {
      this.analogyResults.replaceChildren();
      this.analogyExcluded.textContent = "";
      showError(this.analogyError, err.message);
    }
  }

  resultItem(neighbour, metric) {
    const label = showToken(neighbour.token);
    return el(
      "li",
      { dataset: { token: neighbour.token, id: neighbour.id } },
      el("button", {
        type: "button",
        class: "chip",
        text: label,
        "aria-label": `${label}: show its neighbours`,
        onclick: () => this.neighbours(neighbour.token),
      }),
      el("span", { class: "score", text: `${DISTANCES.includes(metric) ? "distance" : "score"} ${neighbour.score.toFixed(3)}` }),
    );
  }
}
