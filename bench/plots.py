"""Rank heatmaps of the quality benchmark (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rank_heatmaps(result: dict[str, Any], path: Path) -> Path:
    """The base model's routing of the task (all tokens, part A, part B) beside each allocating arm's final ranks
    (mean over seeds), on the same layers x experts grid, so ranks can be read against traffic and demand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    panels: list[tuple[str, list[list[float]], float, float, str]] = []
    routing = result.get("routing")
    if routing:
        for title, grid in (("routing share, all training tokens", routing["all"]),
                            ("routing share, part A tokens (high traffic)", routing["share"]["A"]),
                            ("routing share, part B tokens (low traffic, high demand)", routing["share"]["B"])):
            panels.append((title, grid, 0.0, max(max(r) for r in grid), "viridis"))
    for arm in settings["arms"]:
        maps = [r["ranks"] for r in result["runs"] if r["arm"] == arm]
        if len({v for m in maps for row in m for v in row}) <= 1:
            continue  # uniform arms: nothing to see
        mean = [[sum(m[layer][e] for m in maps) / len(maps) for e in range(len(maps[0][0]))]
                for layer in range(len(maps[0]))]
        panels.append((f"{arm}: final rank, mean of {len(maps)} seed(s)", mean, 0, settings["r_max"], "magma"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.9 * len(panels)), squeeze=False)
    for ax, (title, grid, lo, hi, cmap) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(grid)))
        ax.set_xticks(range(len(grid[0])))
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    axes[-1, 0].set_xlabel("expert")
    fig.suptitle(f"{settings['task']} task: ranks at budget r_target={settings['r_target']} (r_init "
                 f"{settings['r_init']}, r_max {settings['r_max']}), {settings['steps']} steps", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (1.9 * len(panels))))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
