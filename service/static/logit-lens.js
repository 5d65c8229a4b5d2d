// Logit-lens view: what a GPT would predict if it stopped after each block. A grid of layers
// (the output at the top, the embeddings at the bottom) by positions of the prompt; each
// cell holds the most likely next token read off that layer's residual stream through the
// final LayerNorm and the head, coloured by its probability. Pointing at a cell lists its
// top k.

import { el, formatProb, showToken } from "./api.js";
import { ForwardPassView } from "./forward-pass.js";
import { viridis } from "./heatmap.js";

const MAX_TOP_K = 20; // the server's MAX_LENS_TOP_K

/** A row's label, "embeddings", "block 0", … "block 3 (output)": layer `layer` of 0 to `last`. */
function layerName(layer, last) {
  if (layer === 0) return "embeddings";
  return layer === last ? `block ${layer - 1} (output)` : `block ${layer - 1}`;
}

export class LogitLensView extends ForwardPassView {
  constructor(app) {
    super(app, "lens", "/v1/logit-lens");
    this.topK = document.getElementById("lens-k");
    this.table = document.getElementById("lens-table");
    this.bigramHasNone = "its prediction is its table row for the current token, with no layers in between.";
    this.gptsHave = "GPT models have layers to read predictions off";
    this.cursor = null; // [row, position]: row 0 is the output layer
    this.topK.addEventListener("change", () => this.refresh());
    this.table.addEventListener("mouseover", (event) => {
      const cell = event.target.closest("td[data-layer]");
      if (cell) this.setCursor(Number(cell.dataset.row), Number(cell.dataset.position));
    });
    this.table.addEventListener("keydown", (event) => this.key(event));
    this.table.addEventListener("focus", () => this.result && !this.cursor && this.setCursor(0, 0));
  }

  request(model, text) {
    const topK = Math.max(1, Math.min(MAX_TOP_K, Number.parseInt(this.topK.value, 10) || 5));
    return { model: model.id, text, top_k: topK };
  }

  forget() {
    delete this.table.dataset.model;
  }

  show(result) {
    this.cursor = null;
    const { tokens, layers } = result;
    const last = layers.length - 1;
    const skipped = result.skipped_tokens ? `; the first ${result.skipped_tokens} tokens are left out (the model reads ${tokens.length})` : "";
    this.summary.textContent =
      `${result.model}: ${layers.length} layers × ${tokens.length} positions${skipped}. ` +
      "Each cell is the most likely next token after that position, read off that layer; " +
      "underlined where it is the prompt's own next token.";
    const header = el(
      "tr",
      {},
      el("th", { scope: "col", text: "after" }),
      ...tokens.map((token, t) => el("th", { scope: "col", class: "token", dataset: { position: t }, text: showToken(token) })),
    );
    // The output layer on top, as the model's own prediction; the embeddings at the bottom.
    const rows = [...layers].reverse().map((layer, row) =>
      el(
        "tr",
        {},
        el("th", { scope: "row", text: layerName(layer.layer, last) }),
        ...layer.predictions.map((top, t) => {
          const best = top[0];
          const [r, g, b] = viridis(best.prob);
          const cell = el("td", {
            class: tokens[t + 1] === best.token ? "hit" : null,
            dataset: { row, layer: layer.layer, position: t, token: best.token, prob: best.prob },
            text: showToken(best.token),
          });
          cell.style.background = `rgb(${r}, ${g}, ${b})`;
          cell.style.color = best.prob > 0.55 ? "#1f2633" : "#ffffff"; // legible on viridis
          return cell;
        }),
      ),
    );
    this.table.replaceChildren(el("thead", {}, header), el("tbody", {}, ...rows));
    this.readout.textContent = "Point at a cell, or focus the grid and use the arrow keys.";
    Object.assign(this.table.dataset, { model: result.model, layers: layers.length, positions: tokens.length });
  }

  gridSize() {
    return [this.result.layers.length, this.result.tokens.length]; // layer rows by position
  }

  /** Show the top k of the cell at `row` (0: the output layer) and position `t`. */
  setCursor(row, t) {
    const { layers, tokens } = this.result;
    const layer = layers[layers.length - 1 - row];
    this.cursor = [row, t];
    for (const old of this.table.querySelectorAll("td.cursor")) old.classList.remove("cursor");
    const cell = this.table.querySelector(`td[data-row="${row}"][data-position="${t}"]`);
    cell.classList.add("cursor");
    cell.scrollIntoView({ block: "nearest", inline: "nearest" });
    const top = layer.predictions[t];
    this.readout.replaceChildren(
      `After ${showToken(tokens[t])} (position ${t}), ${layerName(layer.layer, layers.length - 1)}: `,
      ...top.flatMap((p, k) => [k ? " · " : "", el("strong", { text: showToken(p.token) }), ` ${formatProb(p.prob)}`]),
    );
    Object.assign(this.readout.dataset, { layer: layer.layer, position: t, token: top[0].token, prob: top[0].prob });
  }
}
