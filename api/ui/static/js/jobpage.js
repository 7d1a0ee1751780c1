// One job: status and controls, live loss and learning-rate charts over the event stream, the rank map with a step
// slider that replays growth, the routing heatmaps, the events, the checkpoints, the adapter download and a prompt box
// that tries the adapter (trybox.js).
import { api, download, eventNumber, streamEvents } from "./api.js";
import { createCharts, Series } from "./charts.js";
import { duration, el, methodOf, num, TERMINAL } from "./format.js";
import { createHeatmap } from "./heatmap.js";
import { createRankMap } from "./rankmap.js";
import { createTryBox } from "./trybox.js";

const ACTIONS = { cancel: "Cancelling…", pause: "Pausing…", resume: "Resuming…" };
// The statuses each request may be sent from, and the ones that mean it was carried out.
const ALLOWED = { cancel: ["validating_files", "queued", "running", "paused"], pause: ["queued", "running"],
  resume: ["paused"] };
const DONE = { cancel: ["cancelled", ...TERMINAL], pause: ["paused", ...TERMINAL], resume: ["queued", "running",
  ...TERMINAL] };

export function jobPage(root, jobId) {
  const abort = new AbortController();
  const series = new Series();
  const alert = el("p", { class: "error", role: "alert" });
  const title = el("h1", { text: jobId });
  const status = el("span", { class: "status", role: "status" });
  const facts = el("dl", { class: "facts" });
  const progress = el("progress", { max: 1, value: 0, "aria-label": "training progress" });
  const progressText = el("span", { class: "note" });
  const buttons = Object.fromEntries(Object.keys(ACTIONS).map((action) => [action,
    el("button", { type: "button", "data-action": action, text: action[0].toUpperCase() + action.slice(1) })]));
  const slider = el("input", { type: "range", "aria-label": "step", min: 0, max: 0, step: 1, value: 0 });
  const sliderText = el("output", { class: "note" });
  const rankMap = createRankMap();
  const charts = createCharts((step) => jumpTo(step));
  const heatmaps = { frequency: createHeatmap("routing frequency"), importance: createHeatmap("importance"),
    saliency: createHeatmap("saliency") };
  const eventsList = el("ol", { class: "events", "aria-label": "events" });
  const showMetrics = el("input", { id: "show-metrics", type: "checkbox" });
  const checkpoints = el("tbody");
  const adapter = el("div", { class: "adapter" });
  const tryBox = createTryBox(jobId);
  let job = null;
  let pending = null;
  let events = [];
  let growthSteps = [];
  let rankMax = 1;
  let lastStep = 0;
  let following = true;  // the slider sits at the last step and moves with it
  let frequency = [];
  let rankRequest = 0;
  let live = null;  // the latest /ranks answer (the map now)

  root.append(
    el("section", { class: "card" },
      el("div", { class: "row" }, title, status),
      facts,
      el("div", { class: "row" }, progress, progressText),
      el("div", { class: "row actions" }, ...Object.values(buttons)),
      alert),
    el("section", { class: "card" }, el("h2", { text: "Training" }), charts.root),
    el("section", { class: "card" }, el("h2", { text: "Rank map (layers x experts)" }),
      el("div", { class: "row" }, el("label", { text: "Step" }), slider, sliderText),
      rankMap.root),
    el("section", { class: "card" }, el("h2", { text: "Routing signals (latest)" }),
      el("div", { class: "heats" }, ...Object.values(heatmaps).map((h) => h.root))),
    el("section", { class: "card" }, el("h2", { text: "Adapter" }), adapter),
    el("section", { class: "card" }, el("h2", { text: "Try it" }), tryBox.root),
    el("section", { class: "card" }, el("h2", { text: "Checkpoints" }),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Step", "Train loss", "Validation loss", "Saved", ""].map(
        (h) => el("th", { scope: "col", text: h })))), checkpoints)),
    el("section", { class: "card" }, el("h2", { text: "Events" }),
      el("div", { class: "row" }, showMetrics, el("label", { for: "show-metrics", text: "Show per-step metrics" })),
      eventsList),
  );

  function showJob(next) {
    job = next;
    const { step, total_steps: total } = job.progress;
    status.textContent = job.status;
    status.className = `status ${job.status}`;
    const hp = job.hyperparameters || {};
    facts.replaceChildren(...[
      ["model", job.model], ["method", methodOf(job)], ["training file", job.training_file],
      ["ranks", hp.r_init !== undefined ? `r_init ${hp.r_init}, r_target ${hp.r_target}, r_max ${hp.r_max}`
        : `r ${hp.r_target}`],
      ["fine-tuned model", job.fine_tuned_model || "–"],
      ["created", new Date(job.created_at * 1000).toLocaleString()],
    ].flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    if (job.error) alert.textContent = `${job.error.code}: ${job.error.message}`;
    progress.max = total || 1;
    progress.value = total ? step : 0;
    const eta = job.estimated_finish && !TERMINAL.includes(job.status)
      ? `, ETA ${duration(job.estimated_finish - Date.now() / 1000)}` : "";
    progressText.textContent = `step ${step}/${total ?? "?"}${eta}`;
    if (pending && DONE[pending].includes(job.status)) pending = null;
    for (const [action, button] of Object.entries(buttons)) {
      const busy = pending === action;
      button.textContent = busy ? ACTIONS[action] : action[0].toUpperCase() + action.slice(1);
      button.disabled = Boolean(pending) || !ALLOWED[action].includes(job.status);
      button.setAttribute("aria-busy", busy ? "true" : "false");
    }
    setLastStep(step);
    tryBox.update(job);
  }

  function setLastStep(step) {
    if (step <= lastStep && slider.max !== "0") return;
    lastStep = Math.max(lastStep, step);
    slider.max = lastStep;
    if (following) {
      slider.value = lastStep;
      sliderText.textContent = `step ${lastStep} of ${lastStep}`;
      rankMap.relabel(lastStep, rankMax);
    }
  }

  // step undefined: the map now (the slider follows the last step); a number: the map as it stood after that step.
  async function showRanks(step) {
    const request = ++rankRequest;
    const ranks = await api(`/fine_tuning/jobs/${jobId}/ranks`, { query: { step } });
    if (request !== rankRequest) return; // a later slider move already asked for another step
    rankMax = ranks.r_max;
    growthSteps = [...new Set(ranks.events.map((e) => e.step))];
    if (step === undefined) {
      live = ranks;
      setLastStep(ranks.step ?? 0);
      charts.update(series, growthSteps);
      drawLive();
    } else {
      rankMap.render(ranks.ranks, rankMax, step, frequency);
      sliderText.textContent = `step ${step} of ${lastStep}`;
    }
  }

  function drawLive() {
    if (!live) return;
    rankMap.render(live.ranks, rankMax, lastStep, frequency);
    sliderText.textContent = `step ${lastStep} of ${lastStep}`;
  }

  function jumpTo(step) {
    following = step >= lastStep;
    slider.value = step;
    showRanks(following ? undefined : step).catch(report);
  }

  let sliderTimer = null;
  slider.addEventListener("input", () => {
    clearTimeout(sliderTimer);
    sliderText.textContent = `step ${slider.value} of ${lastStep}`;
    sliderTimer = setTimeout(() => jumpTo(Number(slider.value)), 60);
  });

  async function showExperts() {
    const stats = await api(`/fine_tuning/jobs/${jobId}/experts`);
    frequency = stats.frequency;
    for (const [name, heatmap] of Object.entries(heatmaps)) heatmap.render(stats[name], stats.ranks);
  }

  async function showCheckpoints() {
    const page = await api(`/fine_tuning/jobs/${jobId}/checkpoints`, { query: { limit: 100 } });
    checkpoints.replaceChildren(...page.data.map((c) => el("tr", {},
      el("td", { text: c.step_number }), el("td", { text: num(c.metrics.train_loss) }),
      el("td", { text: num(c.metrics.valid_loss) }),
      el("td", { text: new Date(c.created_at * 1000).toLocaleTimeString() }),
      el("td", {}, el("button", { type: "button", text: "Download",
        "aria-label": `download the checkpoint at step ${c.step_number}`,
        onclick: () => save({ checkpoint: c.id }, adapter) })))));
    tryBox.update(null, page.data.map((c) => ({ id: c.id, step: c.step_number })));
    if (!page.data.length) checkpoints.append(el("tr", {}, el("td", { colspan: 5, text: "No checkpoints yet." })));
  }

  async function save(query, where) {
    const note = el("p", { class: "note", role: "status", text: "Downloading…" });
    where.append(note);
    try {
      const got = await download(`/fine_tuning/jobs/${jobId}/adapter`, query);
      const check = got.actual === null ? "" : got.actual === got.expected ? " (verified)" : " MISMATCH";
      note.replaceChildren(`${got.name}, ${got.bytes} bytes, sha256 `, el("code", { class: "sha256",
        text: got.expected || got.actual }), check);
    } catch (err) {
      note.className = "error";
      note.textContent = `Download failed: ${err.message}`;
    }
  }

  function showAdapter() {
    if (job.status !== "succeeded") {
      adapter.replaceChildren(el("p", { class: "note", text: "The adapter can be downloaded once the job succeeds." }));
      return;
    }
    if (adapter.dataset.ready) return;
    adapter.dataset.ready = "1";
    adapter.replaceChildren(el("button", { type: "button", text: "Download adapter",
      onclick: () => save(undefined, adapter) }));
  }

  function addEvents(list) {
    events = [...events, ...list];
    const byId = new Map(events.map((e) => [e.id, e]));
    events = [...byId.values()].sort((a, b) => eventNumber(b.id) - eventNumber(a.id)).slice(0, 500);
    renderEvents();
  }

  function renderEvents() {
    const shown = events.filter((e) => showMetrics.checked || e.type !== "metrics").slice(0, 200);
    eventsList.replaceChildren(...shown.map((e) => el("li", { class: e.level },
      el("time", { text: new Date(e.created_at * 1000).toLocaleTimeString() }), ` ${e.message}`)));
  }
  showMetrics.addEventListener("change", renderEvents);

  function onEvent(event) {
    addEvents([event]);
    const d = event.data || {};
    if (event.type === "metrics" && d.step !== undefined) {
      series.merge(d);
      charts.update(series, growthSteps);
      setLastStep(d.step);
    }
    if (d.grown_experts !== undefined) {
      Promise.all([showExperts(), following ? showRanks() : null]).catch(report);
    }
    if (d.checkpoint !== undefined) showCheckpoints().catch(report);
  }

  function report(err) {
    if (err.name !== "AbortError") alert.textContent = err.message;
  }

  for (const [action, button] of Object.entries(buttons)) {
    button.addEventListener("click", async () => {
      pending = action;
      showJob(job);
      try {
        showJob(await api(`/fine_tuning/jobs/${jobId}/${action}`, { method: "POST" }));
        if (action === "resume") follow();
      } catch (err) {
        pending = null;
        showJob(job);
        report(err);
      }
    });
  }

  let streaming = false;
  async function follow() {
    if (streaming) return;
    streaming = true;
    try {
      const after = events.length ? events[0].id : undefined;
      for await (const event of streamEvents(jobId, after, abort.signal)) onEvent(event);
    } catch (err) {
      report(err);
    } finally {
      streaming = false;
    }
    if (abort.signal.aborted) return;
    await refresh();
  }

  async function refresh() {
    showJob(await api(`/fine_tuning/jobs/${jobId}`));
    showAdapter();
    await Promise.all([showExperts(), showCheckpoints(), following ? showRanks() : null]);
  }

  async function start() {
    const [first, metrics, log] = await Promise.all([
      api(`/fine_tuning/jobs/${jobId}`),
      api(`/fine_tuning/jobs/${jobId}/metrics`),
      api(`/fine_tuning/jobs/${jobId}/events`, { query: { limit: 1000 } }),
      showExperts(),
      showRanks(),
      showCheckpoints(),
    ]);
    title.textContent = first.id;
    showJob(first);
    for (const row of metrics.data) series.merge(row);
    addEvents(log.data);
    if (following) drawLive();
    charts.update(series, growthSteps);
    showAdapter();
    if (!TERMINAL.includes(first.status)) follow();
  }

  start().catch(report);
  // The stream carries metrics and events; the job object (status, ETA, pending requests) is re-read as well.
  const timer = setInterval(() => {
    if (!job || (TERMINAL.includes(job.status) && !pending)) return;
    api(`/fine_tuning/jobs/${jobId}`, { signal: abort.signal }).then((next) => {
      const was = job.status;
      showJob(next);
      if (was !== next.status) {
        refresh().catch(report);
        if (!TERMINAL.includes(next.status) && next.status !== "paused") follow();
      }
    }).catch(report);
  }, 2000);
  return () => {
    abort.abort();
    tryBox.stop();
    clearInterval(timer);
    charts.destroy();
  };
}
