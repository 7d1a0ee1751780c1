// Viridis (matplotlib's perceptually uniform, colour-blind-safe map), sampled at tenths and interpolated.
const STOPS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70", "#7ad151",
  "#bddf26", "#fde725"].map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));

function interpolate(t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const [r, g, b] = STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
  return `rgb(${r}, ${g}, ${b})`;
}

// 256 precomputed colours: a 48 x 128 map recolours without building a string per cell.
const PALETTE = Array.from({ length: 256 }, (_, i) => interpolate(i / 255));

export function viridis(t) {
  return PALETTE[Math.round(Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * 255)];
}

// A legend: swatches from low to high with their values, e.g. ranks 0..r_max.
export function legend(label, low, high, format = (v) => String(v), steps = 6) {
  const root = document.createElement("div");
  root.className = "legend";
  root.setAttribute("aria-label", `${label}: colour scale from ${format(low)} to ${format(high)}`);
  const title = document.createElement("span");
  title.className = "legend-title";
  title.textContent = label;
  root.append(title);
  for (let i = 0; i < steps; i++) {
    const t = i / (steps - 1);
    const item = document.createElement("span");
    item.className = "legend-item";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = viridis(t);
    item.append(swatch, format(low + (high - low) * t));
    root.append(item);
  }
  return root;
}
