"""`drlora jobs watch`: a live progress bar, the loss, and each layer's rank map as a one-line heatmap.

Each expert is one character whose height shows its active rank between 0 and r_max, so a layer of 64 experts fits
on one line and the experts DR-LoRA grows stand out as tall bars.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from drlora_cli.client import Client
from service.statuses import STOPPED

BARS = " ▁▂▃▄▅▆▇█"


def heat_row(ranks: list[int], r_max: int) -> str:
    top = len(BARS) - 1
    return "".join(BARS[min(top, max(1, round(r / max(r_max, 1) * top)))] for r in ranks)


def progress_bar(step: int, total: int | None, width: int = 30) -> str:
    if not total:
        return "[" + "." * width + "]"
    filled = min(width, int(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render(job: dict[str, Any], metrics: list[dict[str, Any]], ranks: dict[str, Any]) -> list[str]:
    progress = job.get("progress") or {}
    step, total = progress.get("step", 0), progress.get("total_steps")
    last = metrics[-1] if metrics else {}
    valid = next((m["valid_loss"] for m in reversed(metrics) if m.get("valid_loss") is not None), None)
    loss = f"loss {last['train_loss']:.4f}" if last.get("train_loss") is not None else "loss -"
    extra = f"  valid {valid:.4f}" if valid is not None else ""
    speed = f"  {last['tokens_per_second']:.0f} tok/s" if last.get("tokens_per_second") else ""
    lines = [f"{job['id']}  {job['status']:<9} {progress_bar(step, total)} {step}/{total or '?'}  {loss}{extra}{speed}"]
    if ranks.get("ranks"):
        r_max = ranks["r_max"]
        lines.append(f"ranks at step {ranks['step']} ({ranks['method']}, r_init {ranks['r_init']}, "
                     f"r_target {ranks['r_target']}, r_max {r_max}; {len(ranks['events'])} growth events)")
        for layer, row in enumerate(ranks["ranks"]):
            mean = sum(row) / len(row) if row else 0.0
            lines.append(f"  L{layer:<3}|{heat_row(row, r_max)}| mean {mean:.1f}")
    if job.get("error"):
        lines.append(f"error: {job['error']['message']}")
    return lines


def watch(client: Client, job_id: str, interval: float = 1.0, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Redraws until the job succeeds, fails, is cancelled or paused; returns the last job object."""
    metrics: list[dict[str, Any]] = []
    shown, last_status = 0, ""
    tty = out.isatty()
    while True:
        job = client.get(f"/fine_tuning/jobs/{job_id}")
        after = metrics[-1]["step"] if metrics else None
        metrics += client.get(f"/fine_tuning/jobs/{job_id}/metrics", after=after)["data"]
        ranks = client.get(f"/fine_tuning/jobs/{job_id}/ranks")
        lines = render(job, metrics, ranks)
        done = job["status"] in STOPPED
        if tty:  # redraw in place
            out.write((f"\x1b[{shown}F\x1b[J" if shown else "") + "\n".join(lines) + "\n")
            shown = len(lines)
        elif done:
            out.write("\n".join(lines) + "\n")
        elif lines[0] != last_status:  # a log: one status line per change
            out.write(lines[0] + "\n")
            last_status = lines[0]
        out.flush()
        if done:
            return job
        time.sleep(interval)
