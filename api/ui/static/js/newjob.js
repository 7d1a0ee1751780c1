// The new-job form: upload (or pick) a dataset, pick a model and method, edit hyperparameters (defaults from the
// OpenAPI document), submit.
import { api } from "./api.js";
import { estimateBox } from "./estimate.js";
import { el } from "./format.js";
import { profileSection } from "./profile.js";
import { methodFields } from "./schema.js";

export function newJob(root) {
  const alert = el("p", { class: "error", role: "alert" });
  const uploadStatus = el("p", { class: "note", role: "status" });
  const upload = el("input", { id: "upload", type: "file", accept: ".jsonl,.json,application/jsonl" });
  const trainingFile = el("select", { id: "training-file", required: true });
  const validationFile = el("select", { id: "validation-file" });
  const model = el("select", { id: "model", required: true });
  const method = el("select", { id: "method" }, ...["dr_lora", "lora", "static"].map(
    (m) => el("option", { value: m, text: m })));
  const suffix = el("input", { id: "suffix", type: "text", pattern: "[A-Za-z0-9_\\-]+", maxlength: 64 });
  const hyper = el("fieldset", { class: "hyper" }, el("legend", { text: "Hyperparameters" }));
  const submit = el("button", { type: "submit", text: "Start job" });
  let fields = {};
  // The profile uses the form's max_seq_len, batch size and ranks when the chosen method has them.
  const profile = profileSection({
    model: () => model.value,
    trainingFile: () => trainingFile.value,
    settings: () => {
      const chosen = hyperparameters();
      return Object.fromEntries(["max_seq_len", "batch_size", "r_init", "r_target", "r_max"]
        .filter((name) => chosen[name] !== undefined && chosen[name] !== null).map((name) => [name, chosen[name]]));
    },
  });
  // The pre-flight estimate: a `dry_run` create, refreshed (debounced) whenever the form changes.
  const estimateSection = el("section", { id: "estimate", class: "estimate", "aria-label": "pre-flight estimate" },
    el("h2", { text: "Pre-flight estimate" }));
  const updateEstimate = estimateBox(estimateSection);

  const form = el("form", { class: "card new-job", "aria-label": "new fine-tuning job" },
    el("h1", { text: "New fine-tuning job" }),
    el("fieldset", {}, el("legend", { text: "Data" }),
      el("label", { for: "upload", text: "Upload a JSONL dataset" }), upload, uploadStatus,
      el("label", { for: "training-file", text: "Training file" }), trainingFile,
      el("label", { for: "validation-file", text: "Validation file (optional)" }), validationFile),
    el("fieldset", {}, el("legend", { text: "Model and method" }),
      el("label", { for: "model", text: "Base model" }), model,
      el("label", { for: "method", text: "Method" }), method,
      el("label", { for: "suffix", text: "Suffix (optional)" }), suffix),
    hyper,
    estimateSection, profile.root, submit, alert);
  root.append(form);

  async function loadFiles(selected) {
    const page = await api("/files", { query: { limit: 100 } });
    const options = (files) => files.map((f) => el("option", { value: f.id, text: `${f.filename} (${f.id})` }));
    const fineTune = page.data.filter((f) => f.purpose === "fine-tune");
    const [training, validation] = [trainingFile.value, validationFile.value]; // kept across a reload
    trainingFile.replaceChildren(el("option", { value: "", text: "choose a file" }), ...options(fineTune));
    validationFile.replaceChildren(el("option", { value: "", text: "none" }), ...options(fineTune));
    trainingFile.value = selected || training;
    validationFile.value = validation;
    profile.refresh();
  }

  function showFields() {
    hyper.replaceChildren(el("legend", { text: `Hyperparameters of ${method.value}` }));
    for (const f of fields[method.value] || []) {
      const id = `hp-${f.name}`;
      const input = f.kind === "boolean"
        ? el("input", { id, type: "checkbox", "data-name": f.name, checked: f.default === true })
        : el("input", { id, type: f.kind === "text" ? "text" : "number", "data-name": f.name,
          step: f.kind === "integer" ? 1 : "any", min: f.min, max: f.max, placeholder: f.default ?? "unset",
          value: f.default ?? "" });
      const help = `default ${f.default ?? "unset"}${f.description ? `: ${f.description}` : ""}`;
      hyper.append(el("div", { class: "hp" }, el("label", { for: id, text: f.name }), input,
        el("span", { class: "note", text: help })));
    }
  }

  // Only the values the user changed are sent, so the server's defaults (and its "auto" resolution) apply.
  function hyperparameters() {
    const out = {};
    for (const f of fields[method.value] || []) {
      const input = hyper.querySelector(`[data-name="${f.name}"]`);
      let value;
      if (f.kind === "boolean") value = input.checked;
      else if (input.value.trim() === "") value = null;
      else if (f.kind === "text") value = Number.isNaN(Number(input.value)) ? input.value : Number(input.value);
      else value = Number(input.value);
      if (value !== (f.default ?? null)) out[f.name] = value;
    }
    return out;
  }

  upload.addEventListener("change", async () => {
    const file = upload.files[0];
    if (!file) return;
    uploadStatus.textContent = `Uploading ${file.name}…`;
    uploadStatus.className = "note";
    const data = new FormData();
    data.append("purpose", "fine-tune");
    data.append("file", file);
    try {
      const uploaded = await api("/files", { method: "POST", form: data });
      uploadStatus.textContent = `${uploaded.filename} is valid: ${uploaded.id}, ${uploaded.bytes} bytes.`;
      await loadFiles(uploaded.id);
      updateEstimate(createBody());
    } catch (err) {
      uploadStatus.className = "error";
      uploadStatus.textContent = `${file.name} was refused: ${err.message}`;
    }
  });
  method.addEventListener("change", showFields);
  trainingFile.addEventListener("change", profile.refresh);
  model.addEventListener("change", profile.refresh);

  function createBody() {
    const body = { model: model.value, training_file: trainingFile.value,
      method: { type: method.value, [method.value]: { hyperparameters: hyperparameters() } } };
    if (validationFile.value) body.validation_file = validationFile.value;
    if (suffix.value) body.suffix = suffix.value;
    return body;
  }
  // Edits, selects and the method's redrawn fields all bubble here (after showFields ran on "change").
  for (const type of ["input", "change"]) form.addEventListener(type, () => updateEstimate(createBody()));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.textContent = "";
    const body = createBody();
    submit.disabled = true;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", json: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      alert.textContent = `The job was refused${err.param ? ` (${err.param})` : ""}: ${err.message}`;
    } finally {
      submit.disabled = false;
    }
  });

  (async () => {
    try {
      const [models, methods] = await Promise.all([api("/models"), methodFields(), loadFiles()]);
      model.replaceChildren(...models.data.map((m) => el("option", { value: m.id, text: m.id })));
      fields = methods;
      showFields();
      profile.refresh();
      updateEstimate(createBody());
    } catch (err) {
      alert.textContent = `Could not load the form: ${err.message}`;
    }
  })();
}
