// Attention view: a GPT's attention weights over the prompt's tokens. One head large, as a
// tokens x tokens heatmap (row i: what position i reads, column j: the position read), and
// every layer's and head's pattern small, in a grid like bertviz's model view; a small one
// picks the head the large one shows.

import { el, showToken } from "./api.js";
import { ForwardPassView } from "./forward-pass.js";
import { gridCellAt, gridCellCenter, placeTooltip, sizedCanvas, viridis } from "./heatmap.js";

const THUMB = 64; // px along each side of a small pattern

/** Draw the weights `w` (T x T) on `ctx`, each cell `cell` px, from (x0, y0); masked cells grey. */
function paintWeights(ctx, w, x0, y0, cell) {
  const T = w.length;
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      if (j > i) {
        ctx.fillStyle = "#eef1f6"; // the future: no weight by construction
      } else {
        const [r, g, b] = viridis(w[i][j]);
        ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
      }
      // A hair wider than the cell: no seams between cells at fractional sizes.
      ctx.fillRect(x0 + j * cell, y0 + i * cell, cell + 0.5, cell + 0.5);
    }
  }
}

export class AttentionView extends ForwardPassView {
  constructor(app) {
    super(app, "attn", "/v1/attention");
    this.layerSelect = document.getElementById("attn-layer");
    this.headSelect = document.getElementById("attn-head");
    this.canvas = document.getElementById("attn-map");
    this.wrap = document.getElementById("attn-wrap");
    this.tooltip = document.getElementById("attn-tooltip");
    this.grid = document.getElementById("attn-grid");
    this.bigramHasNone = "each prediction reads only the current token, so there is no attention to show.";
    this.gptsHave = "GPT models attend over their context";
    this.shape = null; // [layers, heads] of the pickers
    this.cursor = null; // [i, j]
    this.layer = 0;
    this.head = 0;
    this.layerSelect.addEventListener("change", () => this.pick(Number(this.layerSelect.value), this.head));
    this.headSelect.addEventListener("change", () => this.pick(this.layer, Number(this.headSelect.value)));
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("focus", () => this.result && !this.cursor && this.setCursor(0, 0, false));
    this.canvas.addEventListener("blur", () => (this.tooltip.hidden = true));
    new ResizeObserver(() => this.result && !this.panel.hidden && this.draw()).observe(this.wrap);
    // The browser tests point at cells by index.
    this.canvas.cellCenter = (i, j) => this.cellCenter(i, j);
  }

  request(model, text) {
    return { model: model.id, text };
  }

  forget() {
    delete this.canvas.dataset.model;
  }

  show(result) {
    this.cursor = null;
    if (this.shape?.[0] !== result.n_layer || this.shape?.[1] !== result.n_head) {
      this.shape = [result.n_layer, result.n_head];
      const options = (n, label) => Array.from({ length: n }, (_, k) => el("option", { value: k, text: `${label} ${k}` }));
      this.layerSelect.replaceChildren(...options(result.n_layer, "layer"));
      this.headSelect.replaceChildren(...options(result.n_head, "head"));
      this.layer = Math.min(this.layer, result.n_layer - 1);
      this.head = Math.min(this.head, result.n_head - 1);
    }
    this.layerSelect.value = String(this.layer);
    this.headSelect.value = String(this.head);
    const count = result.tokens.length;
    const skipped = result.skipped_tokens
      ? ` (the last ${count}: the model reads at most ${count} tokens, so the first ${result.skipped_tokens} are left out)`
      : "";
    this.summary.textContent =
      `${result.model}: ${result.n_layer} layers × ${result.n_head} heads over the prompt's ${count} tokens${skipped}. ` +
      "Row i is the token whose next token is being computed; column j a token it reads.";
    this.readout.textContent = "Point at a cell, or focus the map and use the arrow keys.";
    this.drawGrid();
    this.draw();
    Object.assign(this.canvas.dataset, { model: result.model, layer: this.layer, head: this.head, tokens: count });
  }

  pick(layer, head) {
    this.layer = layer;
    this.head = head;
    this.layerSelect.value = String(layer);
    this.headSelect.value = String(head);
    for (const thumb of this.grid.querySelectorAll("button")) {
      thumb.setAttribute("aria-pressed", String(Number(thumb.dataset.layer) === layer && Number(thumb.dataset.head) === head));
    }
    Object.assign(this.canvas.dataset, { layer, head });
    this.draw();
    if (this.cursor) this.setCursor(...this.cursor, false);
  }

  weights() {
    return this.result.layers[this.layer].heads[this.head];
  }

  // -- drawing ------------------------------------------------------------------------------

  draw() {
    if (!this.result) return;
    const tokens = this.result.tokens;
    const T = tokens.length;
    const width = Math.max(200, Math.min(this.wrap.clientWidth, 640));
    const labelled = (width - 28) / T >= 9;
    const margin = labelled ? 28 : 0;
    const cell = (width - margin) / T;
    this.layout = { margin, cell, T };
    const side = margin + cell * T;
    const ctx = sizedCanvas(this.canvas, side, side);
    paintWeights(ctx, this.weights(), margin, margin, cell);
    if (labelled) {
      ctx.fillStyle = "#3b4252";
      ctx.font = `${Math.min(12, Math.floor(cell))}px ui-monospace, monospace`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      const label = (token) => Array.from(showToken(token)).slice(0, 3).join("");
      tokens.forEach((token, k) => {
        ctx.fillText(label(token), margin / 2, margin + (k + 0.5) * cell); // the reading token
        ctx.fillText(label(token), margin + (k + 0.5) * cell, margin / 2); // the token read
      });
    }
    if (this.cursor) {
      const [i, j] = this.cursor;
      ctx.strokeStyle = "#ff4d6d";
      ctx.lineWidth = 2;
      ctx.strokeRect(margin + j * cell - 1, margin + i * cell - 1, cell + 2, cell + 2);
    }
  }

  /** Every layer's and head's pattern small: rows are layers, columns heads. */
  drawGrid() {
    const { n_layer: layers, n_head: heads } = this.result;
    this.grid.style.gridTemplateColumns = `auto repeat(${heads}, ${THUMB}px)`;
    const cells = [el("span"), ...Array.from({ length: heads }, (_, h) => el("span", { class: "grid-label", text: `head ${h}` }))];
    for (let layer = 0; layer < layers; layer++) {
      cells.push(el("span", { class: "grid-label", text: `layer ${layer}` }));
      for (let head = 0; head < heads; head++) {
        const canvas = el("canvas", { "aria-hidden": "true" });
        const ctx = sizedCanvas(canvas, THUMB, THUMB);
        const w = this.result.layers[layer].heads[head];
        paintWeights(ctx, w, 0, 0, THUMB / w.length);
        cells.push(
          el(
            "button",
            {
              type: "button",
              class: "thumb",
              "aria-label": `Show layer ${layer}, head ${head}`,
              "aria-pressed": String(layer === this.layer && head === this.head),
              dataset: { layer, head },
              onclick: () => this.pick(layer, head),
            },
            canvas,
          ),
        );
      }
    }
    this.grid.replaceChildren(...cells);
  }

  cellCenter(i, j) {
    return gridCellCenter(this.layout, i, j);
  }

  cellAt(event) {
    if (!this.layout) return null;
    return gridCellAt(this.canvas, this.layout, this.layout.T, this.layout.T, event);
  }

  // -- reading cells ------------------------------------------------------------------------

  hover(event) {
    const at = this.cellAt(event);
    if (!at) {
      this.tooltip.hidden = true;
      return;
    }
    this.setCursor(at[0], at[1], true);
  }

  gridSize() {
    const T = this.result.tokens.length;
    return [T, T]; // reader by read token
  }

  setCursor(i, j, withTooltip) {
    this.cursor = [i, j];
    this.draw();
    const weight = this.weights()[i][j];
    const reader = showToken(this.result.tokens[i]);
    const read = showToken(this.result.tokens[j]);
    const what = j > i ? "0 (a later token: masked)" : weight.toFixed(4);
    const text = `layer ${this.layer}, head ${this.head}: ${reader} (position ${i}) reads ${read} (position ${j}) with weight ${what}`;
    this.readout.textContent = text;
    Object.assign(this.readout.dataset, { layer: this.layer, head: this.head, row: i, col: j, weight });
    if (!withTooltip) return;
    this.tooltip.replaceChildren(
      el("strong", { text: `${reader} → ${read}: ${what}` }),
      el("br"),
      `layer ${this.layer}, head ${this.head}`,
    );
    placeTooltip(this.tooltip, this.canvas, this.wrap, this.cellCenter(i, j));
  }
}
