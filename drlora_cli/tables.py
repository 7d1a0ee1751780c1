"""How the list commands print: a table with rich (times as dates, nothing wrapped away), or `--json`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

TIME_COLUMNS = ("created_at", "finished_at", "revoked_at")


def cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in TIME_COLUMNS and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool = False,
               more: str | None = None) -> None:
    """`rows` as a table of `columns` (or the rows as JSON); `more` is printed under the table when the list has
    another page."""
    if as_json:
        print(json.dumps(list(rows), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column == "id")  # an id is copied whole
    for row in rows:
        table.add_row(*(cell(c, row.get(c)) for c in columns))
    # Off a terminal (a pipe, grep) nothing is folded: one row per line.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
    console.print(table if rows else "(none)")
    if more:
        console.print(more)
