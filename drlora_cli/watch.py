"""`drlora jobs watch`: one live frame, redrawn in place with rich, that fits any terminal width and height.

The frame: the job and its status, a progress bar with elapsed time and ETA, train and validation loss with
sparklines of their history, learning rate and tokens/s, and the rank map in `drlora train`'s glyphs (folded to the
room left; see drlora_cli.render). Off a terminal (a pipe, a log file) only the last frame is written.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from drlora_cli.client import Client
from drlora_cli.render import rank_lines, sparkline
from service.statuses import STOPPED, JobStatus

EXIT_CODES = {JobStatus.succeeded: 0, JobStatus.failed: 1, JobStatus.cancelled: 2, JobStatus.paused: 3}
STATUS_STYLE = {JobStatus.succeeded: "bold green", JobStatus.failed: "bold red", JobStatus.cancelled: "bold yellow",
                JobStatus.paused: "yellow", JobStatus.running: "bold cyan"}
FIXED_LINES = 7  # title, progress, four metric rows, a blank: what the rank map cannot use


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _metric_rows(metrics: list[dict[str, Any]], spark_width: int) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True, overflow="crop")
    last = metrics[-1] if metrics else {}
    train = [m["train_loss"] for m in metrics if m.get("train_loss") is not None]
    valid = [m["valid_loss"] for m in metrics if m.get("valid_loss") is not None]
    table.add_row("train loss", _num(train[-1] if train else None), Text(sparkline(train, spark_width), "cyan"))
    table.add_row("valid loss", _num(valid[-1] if valid else None), Text(sparkline(valid, spark_width), "yellow"))
    table.add_row("lr", _num(last.get("learning_rate"), ".2e"), "")
    table.add_row("tokens/s", _num(last.get("tokens_per_second"), ",.0f"), "")
    return table


def _progress(job: dict[str, Any], width: int, now: float) -> Table:
    progress = job.get("progress") or {}
    step, total = progress.get("step", 0), progress.get("total_steps")
    ended = job.get("finished_at") or now
    eta = job.get("estimated_finish")
    times = f"elapsed {duration(ended - job['created_at'])}"
    if eta and job["status"] not in STOPPED:
        times += f"  ETA {duration(eta - now)}"
    label = f"{step}/{total or '?'}"
    row = Table.grid(padding=(0, 1))
    row.add_column(no_wrap=True)
    row.add_column(no_wrap=True)
    row.add_column(no_wrap=True, overflow="crop")
    bar_width = max(10, min(40, width - len(label) - len(times) - 4))
    row.add_row(ProgressBar(total=total or None, completed=step, width=bar_width), label, times)
    return row


def frame(job: dict[str, Any], metrics: list[dict[str, Any]], ranks: dict[str, Any], width: int, height: int,
          now: float | None = None) -> RenderableType:
    """The whole view for a terminal of `width` x `height`: no line is longer than `width` and, when the rank map
    must fold, the frame is no taller than `height`."""
    now = time.time() if now is None else now
    status = Text(job["status"], STATUS_STYLE.get(job["status"], "bold"))
    title = Text.assemble((job["id"], "bold"), "  ", status, f"  {job.get('model', '')}",
                          f"  {(job.get('method') or {}).get('type', '')}", no_wrap=True, overflow="ellipsis")
    parts: list[RenderableType] = [title, _progress(job, width, now),
                                   _metric_rows(metrics, max(0, min(60, width - 30)))]
    if ranks.get("ranks"):
        head = (f"ranks at step {ranks['step']}: r_init {ranks['r_init']}, r_target {ranks['r_target']}, "
                f"r_max {ranks['r_max']}; {len(ranks['events'])} growth events")
        room = max(3, height - FIXED_LINES - 3)  # minus the heading, the mapping and the legend lines
        lines = [head, *rank_lines(ranks["ranks"], ranks["r_max"], width, room)]
        parts.append(Text("\n".join(line[:width] for line in lines), no_wrap=True, overflow="crop"))
    if job.get("error"):
        parts.append(Text(f"error: {job['error']['message']}", "red"))
    return Group(*parts)


def watch(client: Client, job_id: str, interval: float = 1.0, console: Console | None = None) -> dict[str, Any]:
    """Redraws until the job succeeds, fails, is cancelled or paused; returns the last job object."""
    console = console or Console()
    metrics: list[dict[str, Any]] = []
    with Live(console=console, auto_refresh=False, transient=False, vertical_overflow="crop") as live:
        while True:
            job = client.get(f"/fine_tuning/jobs/{job_id}")
            after = metrics[-1]["step"] if metrics else None
            metrics += client.get(f"/fine_tuning/jobs/{job_id}/metrics", after=after)["data"]
            ranks = client.get(f"/fine_tuning/jobs/{job_id}/ranks")
            width, height = console.size
            live.update(frame(job, metrics, ranks, width, height), refresh=True)
            if job["status"] in STOPPED:
                return dict(job)
            time.sleep(interval)
