"""The `drlora` command: each subcommand lives in its own module exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules are imported only to register their parsers; each imports its heavy dependencies inside its handler,
# so `drlora --help` and the client commands start without loading torch.
COMMAND_MODULES: tuple[str, ...] = (
    "drlora_cli.train_cmd",
    "drlora_cli.serve_cmd",
    "drlora_cli.server_cmds",
    "drlora_cli.client_cmds",
    "drlora_cli.profiles_cmd",
    "drlora_cli.bench_cmd",
    "drlora_cli.estimate_cmd",
    "drlora_cli.generate_cmd",
    "drlora_cli.export_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drlora", description="Fine-tune MoE models with DR-LoRA.")
    parser.add_argument("--version", action="version", version=f"drlora {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("drlora")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.1.0+source"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
