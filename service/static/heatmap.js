// Bigram table view: P(next = j | current = i) as a heatmap on a canvas. A vocabulary that fits
// one response (TABLE_SIDE_LIMIT tokens) is drawn whole; a larger one a window at a time, most
// frequent tokens first, with controls to page, resize, reorder and find a token.

import {
  ApiError,
  TABLE_SIDE_LIMIT,
  bigramTable,
  el,
  formatProb,
  postJSON,
  readToken,
  showError,
  showToken,
} from "./api.js";

// viridis, sampled: dark for rare pairs, yellow for likely ones.
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
  .map((hex) => [1, 3, 5].map((at) => Number.parseInt(hex.slice(at, at + 2), 16)));

/** A canvas sized `width` x `height` CSS pixels at the screen's pixel density; its cleared
 * 2-D context, scaled so that drawing is in CSS pixels. */
export function sizedCanvas(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return ctx;
}

/** The centre, in CSS pixels, of cell (i, j) of a grid drawn `margin` pixels in from a canvas'
 * corner, `cell` pixels a cell. */
export function gridCellCenter({ margin, cell }, i, j) {
  return { x: margin + (j + 0.5) * cell, y: margin + (i + 0.5) * cell };
}

/** The cell [i, j] of such a grid of `rows` x `cols` under a mouse `event` on `canvas`, or null. */
export function gridCellAt(canvas, { margin, cell }, rows, cols, event) {
  const box = canvas.getBoundingClientRect();
  const j = Math.floor((event.clientX - box.left - margin) / cell);
  const i = Math.floor((event.clientY - box.top - margin) / cell);
  return i >= 0 && j >= 0 && i < rows && j < cols ? [i, j] : null;
}

/** Show `tooltip` by the point `{ x, y }` of `canvas`, inside `wrap`: right of and below it,
 * above it where there is no room below. */
export function placeTooltip(tooltip, canvas, wrap, { x, y }) {
  tooltip.hidden = false; // first: its size is measured below
  const left = Math.min(canvas.offsetLeft + x + 14, wrap.clientWidth - tooltip.offsetWidth - 4);
  tooltip.style.left = `${Math.max(0, left)}px`;
  const below = y + 14 + tooltip.offsetHeight <= canvas.offsetHeight;
  tooltip.style.top = `${canvas.offsetTop + (below ? y + 14 : y - 14 - tooltip.offsetHeight)}px`;
}

/** The viridis colour of `t` in [0, 1], as [r, g, b]. */
export function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + (VIRIDIS[i + 1][k] - c) * f));
}

// Probabilities are mostly tiny: the colour follows sqrt(p / max) so that the rare pairs show.
const shade = (p, max) => Math.sqrt(p / max);

// Tokens along each side of a window of a large table.
const WINDOW_SIZES = [32, 64, 128, 256];
const DEFAULT_WINDOW = 64;
// Windows kept in memory: paging back and forth does not ask again.
const CACHED_TABLES = 32;
const RANKED_BY = {
  token_id: "by token id",
  training_counts: "most frequent first (training-data counts)",
  stationary_probability: "most frequent first (the model's own long-run token frequencies)",
};

/** The largest value of some rows of numbers (without spreading 65,536 arguments). */
function largest(...tables) {
  let max = 0;
  for (const table of tables) for (const row of table ?? []) for (const v of row) if (v > max) max = v;
  return max;
}

const count = (n) => n.toLocaleString("en");
/** `v` kept to the places 0 to n - 1 of a window's side. */
const clamp = (v, n) => Math.max(0, Math.min(n - 1, v));

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
    this.tables = new Map(); // request key -> table, or ApiError
    this.windows = new Map(); // model id -> the window of its table to show (large ones only)
    this.table = null;
    this.cursor = null; // [i, j] in the window drawn
    this.pendingCursor = null; // where the cursor goes once the window asked for arrives
    this.layout = null;
    this.buildControls();

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

  /** The window controls of a large table, above the heatmap; hidden for a small one. */
  buildControls() {
    const option = (value, text) => el("option", { value, text });
    this.order = el("select", { id: "table-order" },
      option("frequency", "most frequent first"), option("id", "token id"));
    this.size = el("select", { id: "table-size" },
      ...WINDOW_SIZES.map((n) => option(n, `${n} × ${n}`)));
    this.size.value = String(DEFAULT_WINDOW);
    this.order.addEventListener("change", () => this.changeWindow({ order: this.order.value, rowStart: 0, colStart: 0 }));
    this.size.addEventListener("change", () => {
      const size = Number(this.size.value);
      const { rowStart, colStart } = this.windowOf(this.app.model());
      // The same top-left token stays in view, on the new size's grid.
      this.changeWindow({ size, rowStart: rowStart - (rowStart % size), colStart: colStart - (colStart % size) });
    });
    const pager = (axis, label) => {
      const range = el("span", { class: "muted", id: `table-${axis}-range` });
      const back = el("button", { type: "button", class: "inline", text: "◀", "aria-label": `Previous ${label}`, onclick: () => this.shift(axis, -1) });
      const forward = el("button", { type: "button", class: "inline", text: "▶", "aria-label": `Next ${label}`, onclick: () => this.shift(axis, 1) });
      return { range, back, forward, group: el("span", { class: "row" }, range, back, forward) };
    };
    this.pagers = { row: pager("row", "rows"), col: pager("col", "columns") };
    this.findInput = el("input", { id: "table-find-token", type: "text", autocomplete: "off", spellcheck: "false", size: 6 });
    const find = el("form", { class: "row", id: "table-find" },
      el("label", { for: "table-find-token", text: "Find token" }), this.findInput,
      el("button", { type: "submit", text: "Show" }));
    find.addEventListener("submit", (event) => {
      event.preventDefault();
      this.find(readToken(this.findInput.value));
    });
    this.windowSummary = el("p", { class: "hint", id: "table-window-summary" });
    this.controls = el("div", { id: "table-window" },
      el("div", { class: "row" },
        el("label", { for: "table-order", text: "Order" }), this.order,
        el("label", { for: "table-size", text: "Window" }), this.size),
      el("div", { class: "row" }, this.pagers.row.group, this.pagers.col.group),
      find, this.windowSummary);
    this.controls.hidden = true;
    this.body.insertBefore(this.controls, this.wrap);
  }

  // -- which window -------------------------------------------------------------------------

  /** A table too large for one response is shown a window at a time. */
  windowed(model) {
    return model.vocab_size > TABLE_SIDE_LIMIT;
  }

  windowOf(model) {
    if (!this.windows.has(model.id)) {
      this.windows.set(model.id, { order: "frequency", size: DEFAULT_WINDOW, rowStart: 0, colStart: 0, focus: null });
    }
    return this.windows.get(model.id);
  }

  /** The query for the table to show: none for a small one (the whole table). */
  params(model) {
    if (!this.windowed(model)) return {};
    const w = this.windowOf(model);
    const where = w.focus !== null ? { focus: w.focus } : { row_start: w.rowStart, col_start: w.colStart };
    return { order: w.order, rows: w.size, cols: w.size, ...where };
  }

  keyOf(model, params = this.params(model)) {
    return `${model.id}?${new URLSearchParams(Object.entries(params))}`;
  }

  remember(key, table) {
    this.tables.delete(key);
    this.tables.set(key, table);
    while (this.tables.size > CACHED_TABLES) this.tables.delete(this.tables.keys().next().value);
  }

  changeWindow(change, cursor = null) {
    const model = this.app.model();
    if (!model || !this.windowed(model)) return;
    Object.assign(this.windowOf(model), { focus: null }, change);
    this.pendingCursor = cursor;
    this.refresh();
  }

  /** Page the rows (axis "row") or columns ("col") by one window, back (-1) or on (+1). */
  shift(axis, direction, cursor = null) {
    const model = this.app.model();
    const side = axis === "row" ? this.table?.rows : this.table?.cols;
    if (!side || !model || !this.windowed(model)) return false;
    const size = this.windowOf(model).size;
    const start = direction > 0 ? side.next : side.start > 0 ? Math.max(0, side.start - size) : null;
    if (start === null) return false;
    this.changeWindow({ rowStart: this.table.rows.start, colStart: this.table.cols.start, [`${axis}Start`]: start }, cursor);
    return true;
  }

  /** Show the window holding `text`, one token of the model, with the cursor on it. */
  async find(text) {
    const model = this.app.model();
    if (!model || text === "") return;
    try {
      const { ids } = await postJSON("/v1/tokenize", { model: model.id, text });
      if (ids.length !== 1) {
        throw new ApiError(`${showToken(text)} is ${ids.length} tokens of ${model.id}: give exactly one`);
      }
      showError(this.error, "");
      this.windowOf(model).focus = ids[0];
      this.pendingCursor = { id: ids[0] };
      await this.refresh();
    } catch (err) {
      showError(this.error, err.message);
    }
  }

  // -- loading ------------------------------------------------------------------------------

  async refresh() {
    const model = this.app.model();
    if (!model || this.panel.hidden) return;
    if (model.kind !== "bigram") {
      this.explainNoTable(model);
      return;
    }
    this.notice.hidden = true;
    const windowed = this.windowed(model);
    this.controls.hidden = !windowed;
    const key = this.keyOf(model);
    if (!this.tables.has(key)) {
      // Another window of the same table stays in view while this one loads.
      if (this.table?.model !== model.id) this.body.hidden = true;
      showError(this.error, "");
      this.readout.textContent = "Loading the table…";
      this.panel.setAttribute("aria-busy", "true");
      try {
        this.remember(key, await bigramTable(model.id, this.params(model)));
      } catch (err) {
        if (!(err instanceof ApiError) || err.status >= 500 || err.status === 0) {
          this.readout.textContent = "";
          showError(this.error, err.message);
          return; // not cached: try again next time
        }
        this.remember(key, err);
      } finally {
        this.panel.removeAttribute("aria-busy");
      }
      const now = this.app.model();
      if (now?.id !== model.id || this.keyOf(now) !== key) return; // something else was asked for meanwhile
    }
    const table = this.tables.get(key);
    if (table instanceof ApiError) {
      this.table = null;
      this.body.hidden = true;
      this.readout.textContent = "";
      showError(this.error, table.message);
      return;
    }
    showError(this.error, "");
    this.body.hidden = false;
    if (this.table !== table) this.show(model, table);
    else if (this.pendingCursor) this.placeCursor(); // found a token this window already holds
    this.draw();
    Object.assign(this.canvas.dataset, { model: model.id, rowStart: table.rows.start, colStart: table.cols.start });
  }

  show(model, table) {
    this.table = table;
    this.cursor = null;
    if (this.windowed(model)) {
      // A `focus` window is this window too: remember where it is, so paging goes on from it.
      Object.assign(this.windowOf(model), { focus: null, rowStart: table.rows.start, colStart: table.cols.start });
      this.remember(this.keyOf(model), table);
      this.describeWindow(table);
    }
    const empirical = this.source.querySelector('option[value="empirical"]');
    empirical.disabled = table.empirical === null;
    if (table.empirical === null) this.source.value = "probs";
    this.max = largest(table.probs, table.empirical);
    this.legendMax.textContent = formatProb(this.max);
    this.paintCells();
    if (this.pendingCursor) {
      this.placeCursor();
      return;
    }
    this.readout.textContent = "Point at a cell, or focus the table and use the arrow keys.";
    delete this.readout.dataset.row;
  }

  /** The cursor where paging or a found token asked for it: a cell, or a token's row and column. */
  placeCursor() {
    const { rows, cols } = this.table;
    const wanted = this.pendingCursor;
    this.pendingCursor = null;
    const i = wanted.id !== undefined ? rows.ids.indexOf(wanted.id) : wanted.row;
    const j = wanted.id !== undefined ? cols.ids.indexOf(wanted.id) : wanted.col;
    this.setCursor(clamp(i, rows.ids.length), clamp(j, cols.ids.length), wanted.tooltip ?? false);
  }

  describeWindow(table) {
    const span = (side) => `${count(side.start + 1)}–${count(side.start + side.ids.length)}`;
    this.pagers.row.range.textContent = `Rows ${span(table.rows)}`;
    this.pagers.col.range.textContent = `columns ${span(table.cols)}`;
    this.pagers.row.back.disabled = table.rows.start === 0;
    this.pagers.row.forward.disabled = table.rows.next === null;
    this.pagers.col.back.disabled = table.cols.start === 0;
    this.pagers.col.forward.disabled = table.cols.next === null;
    this.order.value = table.order;
    this.size.value = String(this.windowOf(this.app.model()).size);
    this.windowSummary.textContent =
      `${count(table.vocab_size)} tokens, ${RANKED_BY[table.ranked_by]}; ` +
      `${count(table.rows.ids.length)} × ${count(table.cols.ids.length)} of them shown. ` +
      "The arrow keys move the window on past its edges.";
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

  // -- drawing ------------------------------------------------------------------------------

  /** One pixel per cell, on an offscreen canvas that `draw` scales up. */
  paintCells() {
    const values = this.table[this.source.value] ?? this.table.probs;
    const rows = this.table.rows.ids.length;
    const cols = this.table.cols.ids.length;
    this.cells = document.createElement("canvas");
    this.cells.width = cols;
    this.cells.height = rows;
    const context = this.cells.getContext("2d");
    const image = context.createImageData(cols, rows);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const [r, g, b] = viridis(shade(values[i][j], this.max));
        image.data.set([r, g, b, 255], (i * cols + j) * 4);
      }
    }
    context.putImageData(image, 0, 0);
  }

  draw() {
    if (!this.table) return;
    const rows = this.table.rows.ids.length;
    const cols = this.table.cols.ids.length;
    // Cells keep one size whatever the window's shape: the last window of a side may be short.
    const n = Math.max(rows, cols);
    const width = Math.max(200, Math.min(this.wrap.clientWidth, 760));
    const labelled = width / n >= 7;
    const margin = labelled ? 18 : 0;
    const cell = (width - margin) / n;
    const [wide, high] = [margin + cell * cols, margin + cell * rows];
    const ratio = window.devicePixelRatio || 1;
    this.layout = { margin, cell, rows, cols };
    this.canvas.style.width = `${wide}px`;
    this.canvas.style.height = `${high}px`;
    this.canvas.width = Math.round(wide * ratio);
    this.canvas.height = Math.round(high * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, wide, high);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.cells, margin, margin, cell * cols, cell * rows);
    if (labelled) {
      ctx.fillStyle = "#3b4252";
      ctx.font = `${Math.min(12, Math.floor(cell + 1))}px ui-monospace, monospace`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      // Up to two characters, fewer where they are wider than the margin (CJK, say).
      const label = (token) => {
        const shown = Array.from(showToken(token)).slice(0, 2);
        return ctx.measureText(shown.join("")).width <= margin ? shown.join("") : shown[0];
      };
      this.table.rows.tokens.forEach((token, k) => ctx.fillText(label(token), margin / 2, margin + (k + 0.5) * cell)); // current
      this.table.cols.tokens.forEach((token, k) => ctx.fillText(label(token), margin + (k + 0.5) * cell, margin / 2)); // next
    }
    if (this.cursor) {
      const [i, j] = this.cursor;
      ctx.fillStyle = "rgba(255, 255, 255, 0.16)";
      ctx.fillRect(margin, margin + i * cell, cell * cols, cell);
      ctx.fillRect(margin + j * cell, margin, cell, cell * rows);
      ctx.strokeStyle = "#ff4d6d";
      ctx.lineWidth = 2;
      ctx.strokeRect(margin + j * cell - 1, margin + i * cell - 1, cell + 2, cell + 2);
    }
  }

  cellCenter(i, j) {
    return gridCellCenter(this.layout, i, j);
  }

  cellAt(event) {
    if (!this.layout) return null;
    return gridCellAt(this.canvas, this.layout, this.layout.rows, this.layout.cols, event);
  }

  // -- reading cells ------------------------------------------------------------------------

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
    const rows = this.table.rows.ids.length;
    const cols = this.table.cols.ids.length;
    const [i, j] = this.cursor ?? [0, 0];
    const moves = {
      ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1],
      PageUp: [-8, 0], PageDown: [8, 0], Home: [0, -cols], End: [0, cols],
    };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const [ti, tj] = [i + move[0], j + move[1]];
    // Past an edge of a window, the next window that way (Home and End stay in this one).
    if (event.key !== "Home" && event.key !== "End") {
      const model = this.app.model();
      const size = this.windowed(model) ? this.windowOf(model).size : 0;
      const past = (t, n) => (t < 0 ? -1 : t >= n ? 1 : 0);
      const [down, right] = [past(ti, rows), past(tj, cols)];
      const cursor = { row: ti - down * size, col: tj - right * size, tooltip: true };
      if (down && this.shift("row", down, cursor)) return;
      if (right && this.shift("col", right, cursor)) return;
    }
    this.setCursor(clamp(ti, rows), clamp(tj, cols), true);
  }

  setCursor(i, j, withTooltip) {
    const { rows, cols, probs, empirical } = this.table;
    this.cursor = [i, j];
    this.draw();
    const p = probs[i][j];
    const e = empirical ? empirical[i][j] : null;
    const current = showToken(rows.tokens[i]);
    const next = showToken(cols.tokens[j]);
    const text =
      `P(next = ${next} | current = ${current}) = ${formatProb(p)}` +
      (e !== null ? `; empirical ${formatProb(e)}` : "");
    this.readout.textContent = text;
    Object.assign(this.readout.dataset, {
      row: i, col: j, rowId: rows.ids[i], colId: cols.ids[j], prob: p, empirical: e ?? "",
    });
    if (!withTooltip) return;
    this.tooltip.replaceChildren(
      Object.assign(document.createElement("strong"), { textContent: `P(${next} | ${current}) = ${formatProb(p)}` }),
      ...(e !== null ? [document.createElement("br"), `empirical ${formatProb(e)}`] : []),
    );
    placeTooltip(this.tooltip, this.canvas, this.wrap, this.cellCenter(i, j));
  }

  hideTooltip() {
    this.tooltip.hidden = true;
  }
}
