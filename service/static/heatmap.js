// Bigram table view: the V×V table of P(next = j | current = i) as a heatmap on a canvas.

import { ApiError, el, formatProb, getJSON, showError, showToken } from "./api.js";

// viridis, sampled: dark for rare pairs, yellow for likely ones.
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
  .map((hex) => [1, 3, 5].map((at) => Number.parseInt(hex.slice(at, at + 2), 16)));

/** The viridis colour of `t` in [0, 1], as [r, g, b]. */
export function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * f));
}

// Probabilities are mostly tiny: the colour follows sqrt(p / max) so that the rare pairs show.
const shade = (p, max) => Math.sqrt(p / max);

export class HeatmapView {
  constructor(app) {
    this.app = app;
    this.panel = document.getElementById("view-table");
    this.canvas = document.getElementById("heatmap");
    this.wrap = document.getElementById("heatmap-wrap");
    this.tooltip = document.getElementById("heatmap-tooltip");
    this.readout = document.getElementById("heatmap-readout");
    this.source = document.getElementById("table-source");
    this.legendMax = document.getElementById("heatmap-legend-max");
    this.error = document.getElementById("table-error");
    this.notice = document.getElementById("table-notice");
    this.body = document.getElementById("table-body");
    this.tables = new Map(); // model id -> table, or ApiError
    this.table = null;
    this.cursor = null; // [i, j]
    this.layout = null;

    this.source.addEventListener("change", () => {
      this.paintCells();
      this.draw();
    });
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.hideTooltip());
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("focus", () => {
      if (!this.cursor && this.table) this.setCursor(0, 0, false);
    });
    this.canvas.addEventListener("blur", () => this.hideTooltip());
    new ResizeObserver(() => this.table && !this.panel.hidden && this.draw()).observe(this.wrap);
    // The browser tests point at cells by index.
    this.canvas.cellCenter = (i, j) => this.cellCenter(i, j);
  }

  async refresh() {
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    if (model.kind !== "bigram") {
      this.explainNoTable(model);
      return;
    }
    this.notice.hidden = true;
    if (!this.tables.has(model.id)) {
      this.body.hidden = true;
      showError(this.error, "");
      this.readout.textContent = "Loading the table…";
      try {
        this.tables.set(model.id, await getJSON(`/v1/models/${encodeURIComponent(model.id)}/bigram-table`));
      } catch (err) {
        if (!(err instanceof ApiError) || err.status >= 500 || err.status === 0) {
          this.readout.textContent = "";
          showError(this.error, err.message);
          return; // not cached: try again next time
        }
        this.tables.set(model.id, err);
      }
      if (this.app.model()?.id !== model.id) return; // another model was picked meanwhile
    }
    const table = this.tables.get(model.id);
    if (table instanceof ApiError) {
      this.table = null;
      this.body.hidden = true;
      this.readout.textContent = "";
      showError(this.error, table.message);
      return;
    }
    showError(this.error, "");
    this.body.hidden = false;
    if (this.table !== table) {
      this.table = table;
      this.cursor = null;
      const empirical = this.source.querySelector('option[value="empirical"]');
      empirical.disabled = table.empirical === null;
      if (table.empirical === null) this.source.value = "probs";
      this.max = Math.max(...[table.probs, table.empirical ?? []].flat(2));
      this.legendMax.textContent = formatProb(this.max);
      this.paintCells();
      this.readout.textContent = "Point at a cell, or focus the table and use the arrow keys.";
      delete this.readout.dataset.row;
    }
    this.draw();
    this.canvas.dataset.model = model.id;
  }

  /** Only a bigram has a table: say so, and offer the bigram models that are loaded. */
  explainNoTable(model) {
    this.table = null;
    delete this.canvas.dataset.model;
    this.body.hidden = true;
    this.readout.textContent = "";
    showError(this.error, "");
    const bigrams = this.app.models.filter((m) => m.kind === "bigram");
    this.notice.replaceChildren(
      `${model.id} is a ${model.kind.toUpperCase()} model: its next token depends on up to ` +
        `${model.context_length} tokens of context, so it has no single table of P(next | current). ` +
        (bigrams.length ? "Only bigram models have one: " : "No bigram model is loaded."),
      ...bigrams.map((m) =>
        el("button", { type: "button", class: "inline", text: `show ${m.id}`, onclick: () => this.app.pickModel(m.id) }),
      ),
    );
    this.notice.hidden = false;
  }

  /** One pixel per cell, on an offscreen canvas that `draw` scales up. */
  paintCells() {
    const { tokens } = this.table;
    const values = this.table[this.source.value] ?? this.table.probs;
    const n = tokens.length;
    this.cells = document.createElement("canvas");
    this.cells.width = this.cells.height = n;
    const context = this.cells.getContext("2d");
    const image = context.createImageData(n, n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const [r, g, b] = viridis(shade(values[i][j], this.max));
        image.data.set([r, g, b, 255], (i * n + j) * 4);
      }
    }
    context.putImageData(image, 0, 0);
  }

  draw() {
    if (!this.table) return;
    const n = this.table.tokens.length;
    const width = Math.max(200, Math.min(this.wrap.clientWidth, 760));
    const labelled = width / n >= 7;
    const margin = labelled ? 18 : 0;
    const cell = (width - margin) / n;
    const size = margin + cell * n;
    const ratio = window.devicePixelRatio || 1;
    this.layout = { margin, cell, n };
    this.canvas.style.width = `${size}px`;
    this.canvas.style.height = `${size}px`;
    this.canvas.width = Math.round(size * ratio);
    this.canvas.height = Math.round(size * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size, size);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.cells, margin, margin, cell * n, cell * n);
    if (labelled) {
      ctx.fillStyle = "#3b4252";
      ctx.font = `${Math.min(12, Math.floor(cell + 1))}px ui-monospace, monospace`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      this.table.tokens.forEach((token, k) => {
        const label = showToken(token).slice(0, 2);
        const at = margin + (k + 0.5) * cell;
        ctx.fillText(label, margin / 2, at); // rows: current token
        ctx.fillText(label, at, margin / 2); // columns: next token
      });
    }
    if (this.cursor) {
      const [i, j] = this.cursor;
      ctx.fillStyle = "rgba(255, 255, 255, 0.16)";
      ctx.fillRect(margin, margin + i * cell, cell * n, cell);
      ctx.fillRect(margin + j * cell, margin, cell, cell * n);
      ctx.strokeStyle = "#ff4d6d";
      ctx.lineWidth = 2;
      ctx.strokeRect(margin + j * cell - 1, margin + i * cell - 1, cell + 2, cell + 2);
    }
  }

  cellCenter(i, j) {
    const { margin, cell } = this.layout;
    return { x: margin + (j + 0.5) * cell, y: margin + (i + 0.5) * cell };
  }

  cellAt(event) {
    if (!this.layout) return null;
    const box = this.canvas.getBoundingClientRect();
    const { margin, cell, n } = this.layout;
    const j = Math.floor((event.clientX - box.left - margin) / cell);
    const i = Math.floor((event.clientY - box.top - margin) / cell);
    return i >= 0 && j >= 0 && i < n && j < n ? [i, j] : null;
  }

  hover(event) {
    const at = this.cellAt(event);
    if (!at) {
      this.hideTooltip();
      return;
    }
    this.setCursor(at[0], at[1], true);
  }

  key(event) {
    if (!this.table) return;
    const n = this.table.tokens.length;
    const [i, j] = this.cursor ?? [0, 0];
    const moves = {
      ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1],
      PageUp: [-8, 0], PageDown: [8, 0], Home: [0, -n], End: [0, n],
    };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const clamp = (v) => Math.max(0, Math.min(n - 1, v));
    this.setCursor(clamp(i + move[0]), clamp(j + move[1]), true);
  }

  setCursor(i, j, withTooltip) {
    const { tokens, probs, empirical } = this.table;
    this.cursor = [i, j];
    this.draw();
    const p = probs[i][j];
    const e = empirical ? empirical[i][j] : null;
    const current = showToken(tokens[i]);
    const next = showToken(tokens[j]);
    const text =
      `P(next = ${next} | current = ${current}) = ${formatProb(p)}` +
      (e !== null ? `; empirical ${formatProb(e)}` : "");
    this.readout.textContent = text;
    Object.assign(this.readout.dataset, { row: i, col: j, prob: p, empirical: e ?? "" });
    if (!withTooltip) return;
    const { x, y } = this.cellCenter(i, j);
    this.tooltip.replaceChildren(
      Object.assign(document.createElement("strong"), { textContent: `P(${next} | ${current}) = ${formatProb(p)}` }),
      ...(e !== null ? [document.createElement("br"), `empirical ${formatProb(e)}`] : []),
    );
    this.tooltip.hidden = false;
    const offset = this.canvas.offsetLeft;
    const left = Math.min(offset + x + 14, this.wrap.clientWidth - this.tooltip.offsetWidth - 4);
    this.tooltip.style.left = `${Math.max(0, left)}px`;
    const below = y + 14 + this.tooltip.offsetHeight <= this.canvas.offsetHeight;
    const top = below ? y + 14 : y - 14 - this.tooltip.offsetHeight;
    this.tooltip.style.top = `${this.canvas.offsetTop + top}px`;
  }

  hideTooltip() {
    this.tooltip.hidden = true;
  }
}
