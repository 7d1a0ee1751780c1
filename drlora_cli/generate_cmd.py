"""`drlora generate`: a quick try of a trained adapter on this machine.

`--adapter` is an adapter directory (a run's adapter/ folder, or an extracted zip) or a job id: the job's adapter zip
(or `--checkpoint`'s) is downloaded from the configured service (`DRLORA_BASE_URL`), checked against its sha256 and
extracted under the cache (`$DRLORA_CACHE_DIR`, default ~/.cache/drlora/adapters), then used locally. `--model` may
be left out when the adapter names a base model that resolves here (the demo's id or a directory). Prompts follow
the run's data format: chat (the model's chat template) when the adapter records chat data, plain otherwise;
`--chat` / `--no-chat` overrides it. Greedy unless `--temperature` is above 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

JOB_PREFIX = "ftjob-"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="complete prompts with a trained adapter (a quick try)",
                              description="Fold an adapter into its base model in memory and complete prompts.")
    p.add_argument("--adapter", required=True, metavar="DIR|JOB_ID",
                   help="adapter directory, or a job id to download its adapter from the service")
    p.add_argument("--checkpoint", help="with a job id: a checkpoint (id or step) instead of the final adapter")
    p.add_argument("--model", help="base model: local directory or drlora-demo-moe (default: the adapter's own)")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    given.add_argument("--prompts-file", type=Path, help="one prompt per line (blank lines skipped)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when sampling (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="format prompts as a chat user turn (default: as the run's training data was)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print prompts and completions as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from drlora_core.adapter_files import AdapterFilesError
    from drlora_core.config import ConfigError
    from drlora_core.decode import Sampling
    from drlora_core.generate import generate

    try:
        prompts = _prompts(args)
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
        adapter_dir = _adapter_dir(args.adapter, args.checkpoint)
        result = generate(adapter_dir, prompts, sampling, model=args.model, chat=args.chat, device=args.device)
    except (AdapterFilesError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": result.model, "adapter": str(adapter_dir), "chat": result.chat,
                          "completions": [{"prompt": p, "completion": c}
                                          for p, c in zip(prompts, result.completions, strict=True)]}, indent=2))
        return 0
    for prompt, completion in zip(prompts, result.completions, strict=True):
        print(f">>> {prompt}\n{completion}\n")
    return 0


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt:
        return list(args.prompt)
    lines = [line for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{args.prompts_file} holds no prompt (one per line)")
    return lines


def _adapter_dir(adapter: str, checkpoint: str | None) -> Path:
    path = Path(adapter).expanduser()
    if path.is_dir():
        if checkpoint:
            raise ValueError("--checkpoint goes with a job id; for a directory, point --adapter at the checkpoint's "
                             "adapter/ folder")
        from drlora_core.adapter_files import adapter_dir

        return adapter_dir(path)
    if not adapter.startswith(JOB_PREFIX):
        raise ValueError(f"--adapter {adapter!r} is neither a directory nor a job id ({JOB_PREFIX}...)")
    return fetch_job_adapter(adapter, checkpoint)


def cache_root() -> Path:
    return Path(os.environ.get("DRLORA_CACHE_DIR", str(Path.home() / ".cache" / "drlora"))) / "adapters"


def fetch_job_adapter(job_id: str, checkpoint: str | None = None) -> Path:
    """The job's adapter (or checkpoint's), extracted under the cache; downloaded once (stored adapters never
    change). Exits with the service's message when it refuses."""
    import httpx

    from drlora_cli.client import Client, ClientError, base_url, raise_for
    from drlora_cli.download import DownloadError, fetch

    target = cache_root() / (job_id if checkpoint is None else f"{job_id}-checkpoint-{checkpoint}")
    if (target / "drlora_ranks.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fetch(Client().http, f"/fine_tuning/jobs/{job_id}/adapter", tmp / "adapter.zip",
              {"checkpoint": checkpoint} if checkpoint else None, raise_for=raise_for)
        with zipfile.ZipFile(tmp / "adapter.zip") as zf:
            zf.extractall(tmp / "adapter")
    except (ClientError, DownloadError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"error: {e}") from None
    except httpx.HTTPError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"error: cannot reach {base_url()} ({e}); is the service running? (DRLORA_BASE_URL)") from None
    shutil.rmtree(target, ignore_errors=True)
    (tmp / "adapter").rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target
