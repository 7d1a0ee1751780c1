// The new-job form's pre-flight box: a `dry_run` create (nothing is written or queued) answers the memory estimate
// by part and which workers can hold the job; refreshed, debounced, as the user edits the form.
import { api } from "./api.js";
import { el } from "./format.js";

const DEBOUNCE_MS = 400;
const GIB = 2 ** 30;

function gib(bytes) {
  return `${(bytes / GIB).toFixed(2)} GiB`;
}

function partsTable(parts, peak) {
  const rows = Object.entries(parts).map(([name, bytes]) => el("tr", {},
    el("th", { scope: "row", text: name.replaceAll("_", " ") }), el("td", { text: gib(bytes) })));
  return el("table", { class: "estimate-parts", "aria-label": "peak memory by part" },
    el("tbody", {}, ...rows, el("tr", { class: "total" }, el("th", { scope: "row", text: "peak" }),
      el("td", { text: gib(peak) }))));
}

function verdict(answer) {
  if (answer.fits === null && answer.workers.length === 0) {
    return el("p", { class: "note", "data-fits": "unknown",
      text: "No worker has reported recently: the memory check is skipped until one does." });
  }
  if (answer.fits) {
    const names = answer.workers.filter((w) => w.fits).map((w) => `${w.device} (${gib(w.total_bytes)})`);
    return el("p", { class: "ok", "data-fits": "yes", text: `Fits on: ${names.join(", ")}.` });
  }
  const ways = answer.advice.length ? ` Would fit: ${answer.advice.join("; ")}.`
    : " No single change fits: it needs a worker with more memory.";
  return el("p", { class: "error", "data-fits": "no", text: `No worker seen can hold it.${ways}` });
}

// Returns `update(body)`: call it with the create body whenever the form changes.
export function estimateBox(section) {
  const content = el("div", { role: "status" },
    el("p", { class: "note", text: "Pick a training file to see the estimate." }));
  section.append(content);
  let timer = null;
  let latest = 0;

  async function run(body, ticket) {
    try {
      const answer = await api("/fine_tuning/jobs", { method: "POST", json: { ...body, dry_run: true } });
      if (ticket !== latest) return; // a newer edit is on its way
      if (answer.peak_bytes === undefined) {
        content.replaceChildren(el("p", { class: "note",
          text: "No estimate: the base model's config.json is not a family the estimator knows." }));
        return;
      }
      const flops = answer.flops_per_token ? `, ${(answer.flops_per_token.step / 1e9).toFixed(2)} GFLOPs per token`
        : "";
      content.replaceChildren(
        el("p", { text: `${gib(answer.peak_bytes)} peak on ${answer.device} (${answer.dtype}, checkpointing `
          + `${answer.gradient_checkpointing ? "on" : "off"})${flops}` }),
        partsTable(answer.parts, answer.peak_bytes), verdict(answer));
    } catch (err) {
      if (ticket !== latest) return;
      content.replaceChildren(el("p", { class: "error",
        text: `No estimate${err.param ? ` (${err.param})` : ""}: ${err.message}` }));
    }
  }

  return function update(body) {
    clearTimeout(timer);
    const ticket = ++latest;
    if (!body.training_file || !body.model) return;
    timer = setTimeout(() => run(body, ticket), DEBOUNCE_MS);
  };
}
