"""Build an export of a stored adapter directory: another layout, dtype or rank cap, or a merged model.

`export_stored` is the one entry point: the CLI (`drlora export`) and the worker's export task both call it.
Adapter layouts are written by `export_layouts.write_adapter`; merged models are streamed shard by shard by
`merge_stream.merge_streamed`, which never holds more than one shard of the base in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from drlora_core.adapter_files import read_adapter
from drlora_core.export_options import ExportOptions

Progress = Callable[[str, float], None]  # (what is being done, fraction done in [0, 1])


def export_stored(adapter_dir: Path, out_dir: Path, options: ExportOptions, *, base_model_dir: Path | None = None,
                  progress: Progress | None = None) -> Path:
    """Write the export of `adapter_dir` to `out_dir` atomically and return `out_dir`. A merged model needs
    `base_model_dir`, the local directory of the base checkpoint the adapter was trained on."""
    stored = read_adapter(adapter_dir)
    if options.layout == "merged":
        if base_model_dir is None:
            raise ValueError("a merged export needs the base model's local directory (base_model_dir)")
        from drlora_core.merge_stream import merge_streamed

        return merge_streamed(stored, base_model_dir, out_dir, options.dtype, progress=progress)
    from drlora_core.export_layouts import write_adapter

    return write_adapter(stored, out_dir, options, progress=progress)
