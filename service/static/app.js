// The playground: pick a model, stream a generation, and switch between the views.

import { ApiError, errorFrom, getJSON, serverSentEvents, showError } from "./api.js";
import { AttentionView } from "./attention.js";
import { EmbeddingView } from "./embeddings.js";
import { HeatmapView } from "./heatmap.js";
import { LogitLensView } from "./logit-lens.js";
import { NextTokenView } from "./next-token.js";
import { TimelineView } from "./timeline.js";

const $ = (id) => document.getElementById(id);

class Playground {
  constructor() {
    this.models = [];
    this.modelSelect = $("model");
    this.prompt = $("prompt");
    this.completion = $("completion");
    this.promptEcho = $("prompt-echo");
    this.generateButton = $("generate");
    this.stopButton = $("stop");
    this.appendButton = $("append-output");
    this.genStatus = $("gen-status");
    this.genError = $("gen-error");
    this.running = null;

    this.views = {
      "view-next": new NextTokenView(this),
      "view-table": new HeatmapView(this),
      "view-attn": new AttentionView(this),
      "view-lens": new LogitLensView(this),
      "view-embed": new EmbeddingView(this),
      "view-train": new TimelineView(this),
    };
    this.tabs = [...document.querySelectorAll('[role="tab"]')];

    this.modelSelect.addEventListener("change", () => this.modelChanged());
    this.prompt.addEventListener("input", () => {
      for (const id of ["view-next", "view-attn", "view-lens"]) this.views[id].refreshSoon();
    });
    $("generate-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    this.stopButton.addEventListener("click", () => this.running?.abort());
    this.appendButton.addEventListener("click", () => this.appendToPrompt(this.completion.textContent));
    this.tabs.forEach((tab, index) => {
      tab.addEventListener("click", () => this.select(tab));
      tab.addEventListener("keydown", (event) => this.tabKey(event, index));
    });
  }

  // -- what the views ask for -------------------------------------------------------------

  model() {
    return this.models.find((m) => m.id === this.modelSelect.value) ?? null;
  }

  context() {
    return this.prompt.value;
  }

  appendToPrompt(text) {
    this.prompt.value += text;
    this.prompt.dispatchEvent(new Event("input"));
    this.views["view-next"].refresh();
  }

  pickModel(id) {
    this.modelSelect.value = id;
    this.modelChanged();
  }

  // -- models ---------------------------------------------------------------------------------

  async loadModels() {
    for (let attempt = 0; ; attempt++) {
      try {
        const body = await getJSON("/v1/models");
        this.models = body.data;
        this.limits = body.limits;
        break;
      } catch (err) {
        // 503 while the server loads its checkpoints: wait, then ask again.
        if (!(err instanceof ApiError) || err.status !== 503 || attempt > 60) {
          showError($("page-error"), `Cannot list the models: ${err.message}`);
          return;
        }
        $("model-info").textContent = "The server is still loading its models…";
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
    const wanted = new URLSearchParams(window.location.search).get("model");
    this.modelSelect.replaceChildren(
      ...this.models.map((m) => new Option(`${m.id} (${m.kind})`, m.id)),
    );
    const preferred = this.models.find((m) => m.id === wanted) ?? this.models.find((m) => m.kind === "gpt");
    if (preferred) this.modelSelect.value = preferred.id;
    $("max-tokens").max = this.limits.max_new_tokens;
    this.modelSelect.disabled = false;
    this.generateButton.disabled = false;
    document.body.dataset.ready = "true";
    this.modelChanged();
  }

  modelChanged() {
    const model = this.model();
    if (!model) return;
    const loss = model.metrics?.val_loss;
    const facts = [
      model.kind === "gpt" ? `GPT, context ${model.context_length} tokens` : "bigram",
      `${model.vocab_size} tokens`,
      `${model.parameters.toLocaleString("en")} parameters`,
      typeof loss === "number" ? `val loss ${loss.toFixed(3)}` : null,
      `on ${model.device}`,
    ];
    $("model-info").textContent = facts.filter(Boolean).join(" · ");
    this.refreshView();
  }

  // -- generation -------------------------------------------------------------------------

  requestBody() {
    const number = (id) => {
      const value = $(id).value.trim();
      return value === "" ? null : Number(value);
    };
    const body = {
      model: this.model().id,
      prompt: this.prompt.value,
      max_new_tokens: number("max-tokens") ?? 200,
      temperature: number("temperature") ?? 1,
      top_p: number("top-p") ?? 1,
      stream: true,
    };
    const topK = number("top-k");
    const seed = number("seed");
    if (topK !== null) body.top_k = topK;
    if (seed !== null) body.seed = seed;
    return body;
  }

  async generate() {
    if (!this.model()) return;
    this.running?.abort();
    const running = (this.running = new AbortController());
    const body = this.requestBody();
    this.promptEcho.textContent = body.prompt;
    this.completion.textContent = "";
    this.completion.dataset.tokens = "0";
    this.completion.dataset.state = "running";
    showError(this.genError, "");
    this.genStatus.textContent = "Generating…";
    this.generateButton.disabled = true;
    this.stopButton.disabled = false;
    this.appendButton.disabled = true;
    const started = performance.now();
    let count = 0;
    let outcome = null;
    try {
      const response = await fetch("/v1/generate", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: running.signal,
      });
      if (!response.ok) throw await errorFrom(response);
      if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
        // A server without streaming answers with the whole completion at once.
        outcome = await response.json();
        this.completion.textContent = outcome.text;
        count = outcome.token_ids.length;
      } else {
        for await (const { event, data } of serverSentEvents(response)) {
          const payload = JSON.parse(data);
          if (event === "token") {
            this.completion.append(payload.text);
            count += 1;
            this.completion.dataset.tokens = String(count);
            this.genStatus.textContent = `Generating… ${count} tokens`;
          } else if (event === "done") {
            outcome = payload;
          } else if (event === "error") {
            throw new ApiError(payload.error?.message ?? "the generation failed", payload.error ?? {});
          }
        }
        if (outcome && outcome.text !== this.completion.textContent) {
          // A stop string cut the text after its tokens were shown: show what the API returns.
          this.completion.textContent = outcome.text;
        }
      }
      if (!outcome) throw new ApiError("the stream ended before the generation finished");
      const seconds = (performance.now() - started) / 1000;
      const reason = outcome.finish_reason === "stop" ? "reached a stop string" : outcome.finish_reason;
      this.genStatus.textContent =
        `Done: ${outcome.usage.completion_tokens} tokens in ${seconds.toFixed(2)} s (${reason}).`;
      this.completion.dataset.state = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        this.genStatus.textContent = `Stopped after ${count} tokens.`;
        this.completion.dataset.state = "stopped";
      } else {
        this.genStatus.textContent = "";
        showError(this.genError, err.message);
        this.completion.dataset.state = "error";
      }
    } finally {
      if (this.running === running) {
        this.running = null;
        this.generateButton.disabled = false;
        this.stopButton.disabled = true;
        this.appendButton.disabled = this.completion.textContent === "";
      }
    }
  }

  // -- tabs -----------------------------------------------------------------------------------

  select(tab, focus = false) {
    for (const other of this.tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    this.refreshView();
  }

  tabKey(event, index) {
    const last = this.tabs.length - 1;
    const target = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: last }[event.key];
    if (target === undefined) return;
    event.preventDefault();
    this.select(this.tabs[(target + this.tabs.length) % this.tabs.length], true);
  }

  refreshView() {
    const open = this.tabs.find((tab) => tab.getAttribute("aria-selected") === "true");
    this.views[open.getAttribute("aria-controls")].refresh();
  }
}

const playground = new Playground();
playground.loadModels();
