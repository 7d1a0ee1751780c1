// The jobs list: status, method, model, progress and age, refreshed while it is open.
import { api } from "./api.js";
import { age, el, methodOf } from "./format.js";

export function jobsList(root) {
  const body = el("tbody");
  const alert = el("p", { class: "error", role: "alert" });
  const more = el("button", { type: "button", text: "More jobs", hidden: true });
  let shown = 20;

  root.append(el("section", { class: "card" },
    el("div", { class: "row" }, el("h1", { text: "Fine-tuning jobs" }),
      el("a", { class: "button", href: "#/new", text: "New job" })),
    el("table", { class: "jobs" },
      el("thead", {}, el("tr", {}, ...["Job", "Status", "Method", "Model", "Progress", "Created"].map(
        (h) => el("th", { scope: "col", text: h })))),
      body),
    more, alert));

  function row(job) {
    const { step, total_steps: total } = job.progress;
    return el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}`, text: job.id })),
      el("td", {}, el("span", { class: `status ${job.status}`, text: job.status })),
      el("td", { text: methodOf(job) }),
      el("td", { text: job.model }),
      el("td", {}, el("progress", { max: total || 1, value: total ? step : 0, "aria-label": `progress of ${job.id}` }),
        ` ${step}/${total ?? "?"}`),
      el("td", { title: new Date(job.created_at * 1000).toLocaleString(), text: age(job.created_at) }));
  }

  async function load() {
    try {
      const page = await api("/fine_tuning/jobs", { query: { limit: shown } });
      body.replaceChildren(...page.data.map(row));
      if (!page.data.length) {
        body.append(el("tr", {}, el("td", { colspan: 6, text: "No jobs yet: start one with New job." })));
      }
      more.hidden = !page.has_more;
      alert.textContent = "";
    } catch (err) {
      alert.textContent = `Could not list jobs: ${err.message}`;
    }
  }
  more.addEventListener("click", () => { shown += 20; load(); });
  load();
  const timer = setInterval(load, 3000);
  return () => clearInterval(timer);
}
