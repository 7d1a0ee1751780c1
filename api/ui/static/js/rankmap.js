// The rank map: one element per layer x expert (data-layer, data-expert, data-rank), coloured by rank on viridis.
// Cells are built once per shape and recoloured in place, so replaying growth with the slider stays cheap even at
// 48 x 128.
import { el } from "./format.js";
import { hideTip, showTip } from "./tooltip.js";
import { legend, viridis } from "./viridis.js";

export function createRankMap() {
  const grid = el("div", { class: "rankmap", role: "img" });
  const legendSlot = el("div");
  const root = el("div", { class: "rankmap-wrap" }, legendSlot, grid);
  let cells = [];
  let shape = "";
  let frequency = [];

  function build(layers, experts) {
    shape = `${layers}x${experts}`;
    grid.style.gridTemplateColumns = `3.2em repeat(${experts}, minmax(3px, 1fr))`;
    grid.style.gridAutoRows = `${Math.max(8, Math.min(26, Math.round(420 / layers)))}px`;
    const parts = document.createDocumentFragment();
    parts.append(el("span", { class: "axis" }));
    for (let e = 0; e < experts; e++) {
      parts.append(el("span", { class: "axis expert-tick", text: experts <= 16 || e % 8 === 0 ? String(e) : "" }));
    }
    const template = el("span", { class: "cell" });
    cells = [];
    for (let l = 0; l < layers; l++) {
      const every = layers <= 16 ? 1 : 4;
      parts.append(el("span", { class: "axis layer-tick", text: l % every === 0 ? `L${l}` : "" }));
      const row = [];
      for (let e = 0; e < experts; e++) {
        const cell = template.cloneNode(false);
        cell.dataset.layer = l;
        cell.dataset.expert = e;
        row.push(cell);
      }
      parts.append(...row);
      cells.push(row);
    }
    grid.replaceChildren(parts);
  }

  // ranks: list per layer of list per expert; rMax: the top of the colour scale.
  function render(ranks, rMax, step, freq) {
    if (freq) frequency = freq;
    if (!ranks.length) {
      grid.replaceChildren(el("p", { class: "note", text: "No rank map yet: it appears when training starts." }));
      shape = "";
      return;
    }
    if (shape !== `${ranks.length}x${ranks[0].length}`) {
      build(ranks.length, ranks[0].length);
      legendSlot.replaceChildren(legend("rank", 0, rMax, (v) => String(Math.round(v)), rMax <= 16 ? rMax + 1 : 9));
    }
    ranks.forEach((row, l) => row.forEach((rank, e) => {
      const cell = cells[l][e];
      cell.dataset.rank = rank;
      cell.style.backgroundColor = viridis(rank / rMax);
    }));
    relabel(step, rMax);
  }

  // The shown map also holds for a later step when nothing grew in between (the live view between growth events).
  function relabel(step, rMax) {
    if (!shape) return;
    const [layers, experts] = shape.split("x");
    grid.dataset.step = step;
    grid.setAttribute("aria-label", `rank map at step ${step}: ${layers} layers x ${experts} experts, ranks 0 to ${rMax}`);
  }

  grid.addEventListener("mousemove", (event) => {
    const cell = event.target.closest(".cell");
    if (!cell) return hideTip();
    const { layer, expert, rank } = cell.dataset;
    const f = frequency[layer]?.[expert];
    showTip(event, [`layer ${layer}, expert ${expert}`, `rank ${rank}`,
      `frequency ${f === undefined ? "–" : `${(f * 100).toFixed(2)}%`} (latest)`]);
  });
  grid.addEventListener("mouseleave", hideTip);
  return { root, render, relabel };
}
