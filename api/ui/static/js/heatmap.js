// A layers x experts heatmap of one routing signal on a canvas (three of them at 48 x 128 would be 18k elements),
// normalised to its own range, with a legend and a tooltip.
import { el, num } from "./format.js";
import { hideTip, showTip } from "./tooltip.js";
import { legend, viridis } from "./viridis.js";

export function createHeatmap(title) {
  const canvas = el("canvas", { class: "heatmap", role: "img", "aria-label": `${title}: no data yet` });
  const legendSlot = el("div");
  const root = el("figure", { class: "heat" }, el("figcaption", { text: title }), legendSlot, canvas);
  let values = [];
  let ranks = [];

  function render(matrix, rankMatrix) {
    values = matrix || [];
    ranks = rankMatrix || [];
    if (!values.length) return;
    const layers = values.length;
    const experts = values[0].length;
    const flat = values.flat();
    const low = Math.min(...flat);
    const high = Math.max(...flat);
    const width = canvas.clientWidth || 600;
    const cellH = Math.max(3, Math.min(20, Math.round(300 / layers)));
    canvas.width = width;
    canvas.height = cellH * layers;
    const ctx = canvas.getContext("2d");
    const cellW = width / experts;
    for (let l = 0; l < layers; l++) {
      for (let e = 0; e < experts; e++) {
        ctx.fillStyle = viridis(high > low ? (values[l][e] - low) / (high - low) : 0.5);
        ctx.fillRect(Math.floor(e * cellW), l * cellH, Math.ceil(cellW), cellH);
      }
    }
    canvas.setAttribute("aria-label", `${title}: ${layers} layers x ${experts} experts, from ${num(low)} to ${num(high)}`);
    legendSlot.replaceChildren(legend(title, low, high, (v) => num(v, 3)));
  }

  canvas.addEventListener("mousemove", (event) => {
    if (!values.length) return;
    const box = canvas.getBoundingClientRect();
    const l = Math.floor(((event.clientY - box.top) / box.height) * values.length);
    const e = Math.floor(((event.clientX - box.left) / box.width) * values[0].length);
    if (values[l]?.[e] === undefined) return hideTip();
    showTip(event, [`layer ${l}, expert ${e}`, `${title} ${num(values[l][e])}`,
      `rank ${ranks[l]?.[e] ?? "–"}`]);
  });
  canvas.addEventListener("mouseleave", hideTip);
  return { root, render };
}
