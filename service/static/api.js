// Talking to the service: JSON requests in the API's one error shape, and the token stream.

/** A failed request: `message` is the server's own words (`error.message`). */
export class ApiError extends Error {
  constructor(message, { status = 0, type = "network_error", param = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.param = param;
  }
}

/** The ApiError for a non-2xx response, read from `{"error": {message, type, param}}`. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(error.message, { status: response.status, type: error.type, param: error.param });
  }
  return new ApiError(`${response.status} ${response.statusText || "error"} from ${response.url}`, {
    status: response.status,
    type: "http_error",
  });
}

async function request(method, path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      signal,
      headers: body === undefined ? { Accept: "application/json" } : {
        Accept: "application/json",
        "Content-Type": "application/json",
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the server (${err.message})`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export const getJSON = (path, signal) => request("GET", path, undefined, signal);
export const postJSON = (path, body, signal) => request("POST", path, body, signal);

// -- the playground's pictures, served a bounded window at a time ------------------------

/** The most tokens along one side of a bigram-table response (the server's MAX_TABLE_SIDE). */
export const TABLE_SIDE_LIMIT = 256;

/** `?a=1&b=2` of the parameters that are set; "" when none is. */
function queryString(params) {
  const set = Object.entries(params).filter(([, value]) => value !== null && value !== undefined);
  return set.length ? `?${new URLSearchParams(set.map(([k, v]) => [k, String(v)]))}` : "";
}

/**
 * A window of a bigram's table P(next | current). `window` may hold `order` ("id" or
 * "frequency"), `row_start`, `col_start`, `rows`, `cols`, or `focus` (a token id); the answer
 * says which token ids its rows and columns are, and where the next windows start.
 */
export const bigramTable = (modelId, window = {}, signal) =>
  getJSON(`/v1/models/${encodeURIComponent(modelId)}/bigram-table${queryString(window)}`, signal);

/** A page of the 2-D PCA of a model's token vectors: `page` may hold `offset` and `limit`. */
export const tokenEmbeddings = (modelId, page = {}, signal) =>
  getJSON(`/v1/models/${encodeURIComponent(modelId)}/embeddings${queryString(page)}`, signal);

/**
 * Server-sent events from a fetch Response, as `{event, data}` objects.
 *
 * EventSource cannot POST, so the stream is read by hand: lines end in LF, CRLF or CR; a blank
 * line ends an event; `event:` names it (default "message"), `data:` lines join with LF;
 * lines starting with ":" are comments; an unfinished event at the end is dropped.
 */
export async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  const takeLine = (line) => {
    if (line === "") {
      const ready = data.length ? { event, data: data.join("\n") } : null;
      event = "message";
      data = [];
      return ready;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    return null;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split(/\r\n|\n|\r/);
      buffer = lines.pop();
      // A chunk that ends in CR may be half of a CRLF: keep that line until more arrives.
      if (buffer === "" && value.endsWith("\r") && lines.length) buffer = lines.pop() + "\r";
      for (const line of lines) {
        const ready = takeLine(line);
        if (ready) yield ready;
      }
    }
    // An event the stream ended in the middle of is dropped, as EventSource does.
  } finally {
    reader.releaseLock();
  }
}

// -- how tokens look on the page ---------------------------------------------------------

const VISIBLE = { " ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍" };

/** A token's text with whitespace and control characters made visible. */
export function showToken(text) {
  if (text === "") return "∅";
  return Array.from(text, (ch) => {
    if (VISIBLE[ch]) return VISIBLE[ch];
    const code = ch.codePointAt(0);
    if (code < 0x20) return String.fromCodePoint(0x2400 + code);
    return ch;
  }).join("");
}

/** The inverse of `showToken` for what people type: ␣ ⏎ ⇥ stand for space, newline, tab. */
export function readToken(text) {
  return text.replaceAll("␣", " ").replaceAll("⏎", "\n").replaceAll("⇥", "\t");
}

/** A probability for people: "12.3%", "0.042%", "3.1e-7". */
export function formatProb(p) {
  if (p >= 0.001) return `${(p * 100).toFixed(p >= 0.1 ? 1 : 2)}%`;
  if (p >= 1e-5) return `${(p * 100).toFixed(4)}%`;
  return p.toExponential(1);
}

/** Make an element: `el("li", {class: "x"}, child, "text")`. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** Show `message` in an error element (hidden when empty). */
export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}
