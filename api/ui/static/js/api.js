// Every request of the dashboard: the same /v1 routes as the SDK, with the API key from this tab's sessionStorage
// as a Bearer header. No cookies, so there is nothing another site could ride on.

const KEY = "drlora.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, error) {
    const where = error.line ? `line ${error.line}: ` : "";
    super(`${where}${error.message || `HTTP ${status}`}`);
    this.status = status;
    this.param = error.param || null;
    this.line = error.line || null;
    this.code = error.code || null;
  }
}

function url(path, query) {
  const u = new URL(`/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null) u.searchParams.set(k, v);
  }
  return u;
}

async function send(path, { method = "GET", json, form, query, headers = {}, signal } = {}) {
  const init = { method, signal, headers: { Authorization: `Bearer ${auth.key}`, ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form) {
    init.body = form;
  }
  const response = await fetch(url(path, query), init);
  if (!response.ok) {
    let error = {};
    try { error = (await response.json()).error || {}; } catch { /* not JSON */ }
    const err = new ApiError(response.status, error);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("drlora:unauthorized", { detail: err }));
    throw err;
  }
  return response;
}

export async function api(path, options) {
  return (await send(path, options)).json();
}

async function sha256Hex(blob) {
  if (!crypto.subtle) return null; // only in a secure context (https or localhost)
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Downloads through fetch (a plain link cannot carry the Bearer header), then saves the bytes from memory.
export async function download(path, query) {
  const response = await send(path, { query });
  const blob = await response.blob();
  const name = /filename="?([^";]+)"?/.exec(response.headers.get("content-disposition") || "")?.[1] || "download.zip";
  const expected = response.headers.get("x-content-sha256");
  const actual = await sha256Hex(blob);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  return { name, bytes: blob.size, expected, actual };
}

// Server-sent events over fetch (EventSource cannot send an Authorization header). Yields each event object and
// returns when the server sends [DONE] (the job ended or paused) or the signal aborts.
export async function* streamEvents(jobId, after, signal) {
  const response = await send(`/fine_tuning/jobs/${jobId}/events`, {
    query: { stream: "true", after }, headers: { Accept: "text/event-stream" }, signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue; // a keep-alive comment
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

export function eventNumber(id) {
  return Number(String(id).replace(/^ftevent-/, "")) || 0;
}
