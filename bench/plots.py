"""Rank heatmaps of the quality benchmark (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rank_heatmaps(result: dict[str, Any], path: Path) -> Path:
    """One panel per method (final ranks, mean over seeds, layers x experts) beside the target task's routing
    share, on the same layers x experts grid, so ranks can be read against where the task's tokens go."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    methods = list(result["summary"])
    share = result.get("target_routing_share")
    panels: list[tuple[str, list[list[float]], float, float, str]] = []
    if share is not None:
        panels.append(("target task routing share", share, 0.0, max(max(r) for r in share), "viridis"))
    for method in methods:
        maps = [r["ranks"] for r in result["runs"] if r["method"] == method]
        mean = [[sum(m[layer][e] for m in maps) / len(maps) for e in range(len(maps[0][0]))]
                for layer in range(len(maps[0]))]
        title = f"{method}: final rank, mean of {len(maps)} seed(s)"
        panels.append((title, mean, 0, settings["r_max"], "magma"))  # one scale: colours compare across methods
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.9 * len(panels)), squeeze=False)
    for ax, (title, grid, lo, hi, cmap) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(grid)))
        ax.set_xticks(range(len(grid[0])))
        fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    axes[-1, 0].set_xlabel("expert")
    fig.suptitle(f"ranks at budget r_target={settings['r_target']} (r_init {settings['r_init']}, r_max "
                 f"{settings['r_max']}), {settings['steps']} steps", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
