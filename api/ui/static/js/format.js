// Small text formatters shared by the views.

export function age(unixSeconds) {
  return duration(Date.now() / 1000 - unixSeconds) + " ago";
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function num(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(2);
  return Number(value.toFixed(digits)).toString();
}

export function methodOf(job) {
  return job.method?.type || "dr_lora";
}

export const TERMINAL = ["succeeded", "failed", "cancelled"];

// A tiny element builder: el("p", {class: "x", text: "hi"}, child, ...). Attributes only, never inline styles or
// HTML strings, so nothing a server answer holds can become markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
