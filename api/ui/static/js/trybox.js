// The job page's "Try it" box: a prompt, a checkpoint (or the final adapter), and a Generate button that asks a
// worker for a completion (POST .../generations), polls it and shows the answer. Text goes in as textContent only.
import { api } from "./api.js";
import { el } from "./format.js";

const POLL_MS = 1000;
const FINAL = "";

export function createTryBox(jobId) {
  const prompt = el("textarea", { id: "try-prompt", rows: 3, maxlength: 4000, placeholder: "What is 12 plus 7?" });
  const checkpoint = el("select", { id: "try-checkpoint" });
  const maxTokens = el("input", { id: "try-max-tokens", type: "number", min: 1, max: 256, value: 32 });
  const button = el("button", { type: "button", text: "Generate" });
  const state = el("p", { id: "try-state", class: "note", role: "status" });
  const alert = el("p", { class: "error", role: "alert" });
  const answers = el("ol", { class: "completions", "aria-label": "completions" });
  const root = el("div", { class: "try" },
    el("label", { for: "try-prompt", text: "Prompt" }), prompt,
    el("div", { class: "row" },
      el("label", { for: "try-checkpoint", text: "Adapter" }), checkpoint,
      el("label", { for: "try-max-tokens", text: "Max new tokens" }), maxTokens,
      button),
    state, alert, answers);
  let succeeded = false;
  let steps = [];
  let busy = false;
  let stopped = false;

  let picked = null;  // what the user chose; until then the first option (the final adapter once there is one)
  checkpoint.addEventListener("change", () => { picked = checkpoint.value; });

  function setOptions() {
    const chosen = picked;
    const options = succeeded ? [el("option", { value: FINAL, text: "final adapter" })] : [];
    options.push(...steps.map((s) => el("option", { value: String(s.id), text: `checkpoint at step ${s.step}` })));
    checkpoint.replaceChildren(...options);
    if (chosen !== null && [...checkpoint.options].some((o) => o.value === chosen)) checkpoint.value = chosen;
    const ready = checkpoint.options.length > 0;
    button.disabled = busy || !ready;
    if (!ready && !busy) state.textContent = "A completion can be asked for once the job has a checkpoint.";
    else if (!busy && state.textContent.startsWith("A completion")) state.textContent = "";
  }

  async function generate() {
    alert.textContent = "";
    busy = true;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    state.textContent = "Queued…";
    try {
      const body = { prompts: [prompt.value], max_new_tokens: Number(maxTokens.value) };
      if (checkpoint.value !== FINAL) body.checkpoint = checkpoint.value;
      let gen = await api(`/fine_tuning/jobs/${jobId}/generations`, { method: "POST", json: body });
      while (!stopped && (gen.status === "queued" || gen.status === "running")) {
        state.textContent = gen.status === "queued" ? "Queued for a worker…" : "Generating…";
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        gen = await api(`/fine_tuning/jobs/${jobId}/generations/${gen.id}`);
      }
      if (gen.status === "succeeded") {
        state.textContent = `Step ${gen.step}${gen.chat ? ", chat format" : ""}:`;
        answers.prepend(...gen.completions.map((c) => el("li", {},
          el("div", { class: "prompt", text: c.prompt }), el("pre", { class: "completion", text: c.text }))));
      } else if (gen.error) {
        state.textContent = "";
        alert.textContent = `${gen.error.code}: ${gen.error.message}`;
      }
    } catch (err) {
      state.textContent = "";
      alert.textContent = err.message;
    } finally {
      busy = false;
      button.setAttribute("aria-busy", "false");
      setOptions();
    }
  }
  button.addEventListener("click", () => { generate(); });
  setOptions();

  return {
    root,
    // The job's status (the final adapter exists once it succeeded) and its checkpoints ({id, step} each).
    update(job, checkpoints) {
      if (job) succeeded = job.status === "succeeded";
      if (checkpoints) steps = checkpoints;
      setOptions();
    },
    stop() { stopped = true; },
  };
}
