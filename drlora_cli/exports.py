"""`drlora adapter download` with export options: the request body from the flags, and the wait for the worker."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from drlora_core.export_options import ExportOptions

FLAGS = {"layout": "layout", "dtype": "dtype", "max_rank": "max_rank", "base_model_name": "base_model_name_or_path"}


def export_body(args: argparse.Namespace) -> dict[str, Any]:
    """The export options the flags ask for; empty when they are the adapter as trained (no export needed)."""
    body = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    try:
        options = ExportOptions(**body)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return {} if options.is_default else body


def wait_export(client: Any, job_path: str, export: dict[str, Any], interval: float = 1.0,
                out: TextIO = sys.stderr) -> dict[str, Any]:
    """Poll the export until it succeeded (returned) or failed (exit with its error), printing each change of
    status, stage or whole percent."""
    shown = None
    while True:
        line = f"export {export['id']}: {export['status']} {export['progress']:.0%}" + (
            f" ({export['stage']})" if export.get("stage") else "")
        if line != shown:
            print(line, file=out, flush=True)
            shown = line
        if export["status"] == "succeeded":
            return export
        if export["status"] == "failed":
            error = export.get("error") or {}
            raise SystemExit(f"error: export {export['id']} failed: {error.get('code')}: {error.get('message')} "
                             "(the same command asks for it again)")
        time.sleep(interval)
        export = client.get(f"{job_path}/exports/{export['id']}")
