// The loss chart (train and validation, growth events marked and clickable) and the learning-rate chart, on uPlot.
import { el, num } from "./format.js";

const uPlot = window.uPlot;

// A series store keyed by step: metric rows and events merge into it, the charts redraw from it.
export class Series {
  constructor() { this.rows = new Map(); }
  merge(row) {
    const old = this.rows.get(row.step) || { step: row.step };
    for (const [k, v] of Object.entries(row)) if (v !== null && v !== undefined) old[k] = v;
    this.rows.set(row.step, old);
  }
  columns(...names) {
    const rows = [...this.rows.values()].sort((a, b) => a.step - b.step);
    return [rows.map((r) => r.step), ...names.map((n) => rows.map((r) => r[n] ?? null))];
  }
  get last() {
    let best = null;
    for (const row of this.rows.values()) if (!best || row.step > best.step) best = row;
    return best;
  }
}

function width(node) {
  return Math.max(320, (node.clientWidth || 640) - 8);
}

export function createCharts(onGrowthClick) {
  const lossBox = el("div", { class: "chart", role: "img", "aria-label": "training and validation loss by step" });
  const lrBox = el("div", { class: "chart", role: "img", "aria-label": "learning rate by step" });
  const markers = el("div", { class: "growth-markers", "aria-label": "growth events" });
  const root = el("div", { class: "charts" },
    el("figure", {}, el("figcaption", { text: "Loss (growth events marked; click one to see its rank map)" }),
      lossBox),
    el("figure", {}, el("figcaption", { text: "Learning rate" }), lrBox));
  let growthSteps = [];
  let loss = null;
  let lr = null;

  function placeMarkers(u) {
    const plot = u.root.querySelector(".u-wrap");
    if (plot && markers.previousElementSibling !== plot) plot.after(markers); // right under the plot, above its legend
    markers.replaceChildren(...growthSteps.map((step) => {
      const button = el("button", { type: "button", class: "marker", "data-step": step,
        "aria-label": `growth at step ${step}`, title: `growth at step ${step}`, text: "▲" });
      button.style.left = `${u.bbox.left / devicePixelRatio + u.valToPos(step, "x")}px`;
      button.addEventListener("click", () => onGrowthClick(step));
      return button;
    }));
  }

  function drawGrowth(u) {
    const { ctx } = u;
    ctx.save();
    ctx.strokeStyle = "rgba(120, 120, 120, 0.8)";
    ctx.setLineDash([4, 4]);
    for (const step of growthSteps) {
      const x = Math.round(u.valToPos(step, "x", true));
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function make(box, series, hooks) {
    return new uPlot({ width: width(box), height: 220, scales: { x: { time: false } },
      axes: [{ label: "step" }, { size: 60, values: (u, values) => values.map((v) => num(v, 3)) }],
      series: [{ label: "step" }, ...series], hooks }, [[]], box);
  }

  function update(store, steps) {
    growthSteps = steps;
    if (!loss) {
      loss = make(lossBox, [
        { label: "train loss", stroke: "#3b528b", width: 2 },
        { label: "validation loss", stroke: "#e3a600", width: 2, spanGaps: true, points: { show: true, size: 7 } },
      ], { draw: [drawGrowth], setSize: [placeMarkers], setScale: [placeMarkers] });
      lr = make(lrBox, [{ label: "learning rate", stroke: "#21918c", width: 2 }], {});
    }
    loss.setData(store.columns("train_loss", "valid_loss"));
    lr.setData(store.columns("learning_rate"));
    placeMarkers(loss);
  }

  function resize() {
    if (loss) loss.setSize({ width: width(lossBox), height: 220 });
    if (lr) lr.setSize({ width: width(lrBox), height: 220 });
  }
  window.addEventListener("resize", resize);
  return { root, update, destroy: () => window.removeEventListener("resize", resize) };
}
