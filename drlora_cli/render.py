"""Text renderings shared by `drlora train` and `drlora jobs watch`: the rank map's glyphs and legend, folding a
map to a terminal's width and height, and loss sparklines. Plain strings, no terminal library, no torch.

A rank map line shows one glyph per expert, darker for a higher rank out of r_max. A map wider than the terminal
is folded: each glyph then stands for a bin of neighbouring experts and shows the bin's highest rank (the experts
DR-LoRA grows stay visible), and the mapping is printed. Layers fold the same way when the map is taller than the
room left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SHADES = " .:-=+*#%@"
SPARKS = "▁▂▃▄▅▆▇█"


def glyph(rank: int, r_max: int) -> str:
    top = len(SHADES) - 1
    level = round(rank / max(r_max, 1) * top)
    return SHADES[min(top, max(1 if rank > 0 else 0, level))]  # a live expert never looks empty


def legend(r_max: int) -> str:
    """Which rank each glyph stands for, e.g. "rank: .=2 :=4 -=5 ... @=16 (of r_max 16)"."""
    top = len(SHADES) - 1
    marks = [f"{SHADES[i]}={round(i * r_max / top)}" for i in range(1, top + 1)]
    return f"rank: {' '.join(marks)} (of r_max {r_max})"


@dataclass(frozen=True)
class Folded:
    rows: list[list[int]]  # the map after binning: rows of bins, each the bin's highest rank
    experts_per_glyph: int
    layers_per_row: int

    def mapping(self) -> str:
        """The fold in words, empty when nothing was folded."""
        parts = []
        if self.experts_per_glyph > 1:
            parts.append(f"each glyph = {self.experts_per_glyph} experts")
        if self.layers_per_row > 1:
            parts.append(f"each row = {self.layers_per_row} layers")
        return "; ".join(parts) + " (highest rank shown)" if parts else ""


def fold(ranks: list[list[int]], max_columns: int, max_rows: int | None = None) -> Folded:
    """Bins experts (and layers) so that the map fits in `max_columns` glyphs by `max_rows` rows."""
    experts = len(ranks[0]) if ranks else 0
    per_glyph = max(1, math.ceil(experts / max(max_columns, 1)))
    per_row = max(1, math.ceil(len(ranks) / max_rows)) if max_rows else 1
    binned = [[max(row[e:e + per_glyph]) for e in range(0, experts, per_glyph)] for row in ranks]
    stacked = [[max(col) for col in zip(*binned[layer:layer + per_row], strict=True)]
               for layer in range(0, len(binned), per_row)]
    return Folded(stacked, per_glyph, per_row)


def rank_lines(ranks: list[list[int]], r_max: int, width: int, max_rows: int | None = None) -> list[str]:
    """The map as lines of at most `width` characters: "L0   |glyphs| mean 4.2", folded to fit, then the mapping
    (when folded) and the legend."""
    if not ranks:
        return []
    label, tail = 6, 12  # "L12  |" and "| mean 12.3"
    folded = fold(ranks, width - label - tail, max_rows)
    lines = []
    for index, row in enumerate(folded.rows):
        first = index * folded.layers_per_row
        layers = ranks[first:first + folded.layers_per_row]
        mean = sum(map(sum, layers)) / sum(map(len, layers))
        name = f"L{first}" if folded.layers_per_row == 1 else f"L{first}+"
        lines.append(f"{name:<5}|{''.join(glyph(r, r_max) for r in row)}| mean {mean:.1f}"[:width])
    if folded.mapping():
        lines.append(folded.mapping()[:width])
    lines.append(legend(r_max)[:width])
    return lines


def sparkline(values: list[float], width: int) -> str:
    """The last `width` values as bars between their min and max (the series' shape, not its scale)."""
    shown = [v for v in values if v is not None and math.isfinite(v)][-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - low) / (high - low) * top) if high > low else top // 2] for v in shown)


def rank_summary(ranks: list[list[int]], r_max: int) -> str:
    """`drlora train`'s closing map: one line per layer, its glyphs, then the ranks and their spread."""
    lines = [f"rank map ({len(ranks)} layers x {len(ranks[0])} experts):"]
    for layer, row in enumerate(ranks):
        glyphs = "".join(glyph(r, r_max) for r in row)
        lines.append(f"  L{layer:<3}|{glyphs}|  {' '.join(map(str, row))}  (min {min(row)}, max {max(row)}, "
                     f"mean {sum(row) / len(row):.1f})")
    lines.append("  " + legend(r_max))
    return "\n".join(lines)
