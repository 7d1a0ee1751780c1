// The routing profile on the new-job form: "Profile routing" asks a worker to run the chosen base model over the
// chosen file (POST /fine_tuning/profiles), polls until it ends, and shows the share of each layer's tokens per
// expert as a heatmap (the tooltip gives the rank `static` would fix), the token lengths and what max_seq_len cuts.
import { api } from "./api.js";
import { el, num } from "./format.js";
import { createHeatmap } from "./heatmap.js";

const POLL_MS = 1000;

export function profileSection(inputs) {
  const button = el("button", { type: "button", id: "profile-routing", text: "Profile routing", disabled: true });
  const status = el("p", { class: "note", role: "status", id: "profile-status" });
  const facts = el("ul", { class: "profile-facts" });
  const heatmap = createHeatmap("routing share");
  heatmap.root.hidden = true;
  const root = el("section", { id: "profile", class: "estimate", "aria-label": "routing profile" },
    el("h2", { text: "Routing profile" }),
    el("p", { class: "note", text: "Runs the base model over the first examples of the training file, without " +
      "training: which experts each layer routes to, and what static would allocate." }),
    button, status, facts, heatmap.root);

  function refresh() {
    button.disabled = !(inputs.model().trim() && inputs.trainingFile().trim());
  }

  function show(profile) {
    const { lengths, truncation, hyperparameters: hp } = profile;
    facts.replaceChildren(
      el("li", { text: `${profile.examples} examples, ${profile.tokens} tokens profiled` }),
      el("li", { text: `lengths of ${lengths.records} records: min ${lengths.min}, p50 ${lengths.p50}, ` +
        `p90 ${lengths.p90}, max ${lengths.max} tokens` }),
      el("li", { text: `max_seq_len ${truncation.max_seq_len} cuts ${num(truncation.cut_fraction * 100, 1)}% ` +
        `of the tokens (${truncation.truncated_examples} records)` }),
      el("li", { text: `static at r_init ${hp.r_init}, r_target ${hp.r_target}, r_max ${hp.r_max}: the tooltip ` +
        "shows each expert's rank" }));
    heatmap.root.hidden = false;
    heatmap.render(profile.frequency, profile.static_ranks);
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    facts.replaceChildren();
    heatmap.root.hidden = true;
    status.className = "note";
    try {
      const body = { model: inputs.model(), training_file: inputs.trainingFile(), ...inputs.settings() };
      let profile = await api("/fine_tuning/profiles", { method: "POST", json: body });
      while (!["succeeded", "failed"].includes(profile.status)) {
        status.textContent = `Profile ${profile.id} is ${profile.status}…`;
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        profile = await api(`/fine_tuning/profiles/${profile.id}`);
      }
      if (profile.status === "failed") throw new Error(profile.error?.message || "the profile failed");
      status.textContent = `Profile ${profile.id} succeeded.`;
      show(profile);
    } catch (err) {
      status.className = "error";
      status.textContent = `The profile failed: ${err.message}`;
    } finally {
      refresh();
    }
  });
  return { root, refresh };
}
