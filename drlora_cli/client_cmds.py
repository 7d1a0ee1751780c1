"""Client commands against a running service: `drlora files`, `drlora jobs`, `drlora adapter`.

They read `DRLORA_BASE_URL` (default http://127.0.0.1:8000) and `DRLORA_API_KEY`, print tables for lists and
summaries for single objects (`--json` prints what the API returned), and exit non-zero with the API's error message
when a request is refused. `jobs watch` and `jobs create --watch` exit 0 when the job succeeded, 1 when it failed,
2 when it was cancelled and 3 when it was paused.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from drlora_core.config import METHODS
from service.statuses import JobStatus


def register(subparsers: Any) -> None:
    files = subparsers.add_parser("files", help="training files").add_subparsers(dest="files_command", required=True)
    p = files.add_parser("upload", help="upload and validate a JSONL dataset")
    p.add_argument("path", type=Path)
    p.add_argument("--purpose", default="fine-tune")
    p.set_defaults(handler=files_upload)
    _list_parser(files, "your files, newest first", files_list)
    p = files.add_parser("delete", help="delete a file")
    p.add_argument("file_id")
    p.set_defaults(handler=files_delete)

    jobs = subparsers.add_parser("jobs", help="fine-tuning jobs").add_subparsers(dest="jobs_command", required=True)
    p = jobs.add_parser("create", help="start a fine-tuning job")
    p.add_argument("--model", default="drlora-demo-moe")
    p.add_argument("--training-file", required=True, help="file id from `drlora files upload`")
    p.add_argument("--validation-file")
    p.add_argument("--method", choices=METHODS, default="dr_lora")
    p.add_argument("--set", dest="hyperparameters", action="append", default=[], metavar="NAME=VALUE",
                   help="a hyperparameter, e.g. --set max_steps=20 --set r_init=2 (repeatable)")
    p.add_argument("--suffix")
    p.add_argument("--seed", type=int)
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--idempotency-key")
    p.add_argument("--watch", action="store_true", help="follow the job until it ends (exit 0 succeeded, 1 failed, "
                                                        "2 cancelled, 3 paused)")
    p.set_defaults(handler=jobs_create)

    _list_parser(jobs, "your jobs, newest first", jobs_list)
    p = jobs.add_parser("get", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=jobs_get)
    for name, help_text in (("cancel", "cancel a job"), ("pause", "pause a job at a checkpoint"),
                            ("resume", "resume a paused job from its checkpoint")):
        p = jobs.add_parser(name, help=help_text)
        p.add_argument("job_id")
        p.set_defaults(handler=jobs_action, action=name)
    p = jobs.add_parser("watch", help="live progress, losses and rank map of a job (exit 0 succeeded, 1 failed, "
                                      "2 cancelled, 3 paused)")
    p.add_argument("job_id")
    p.add_argument("--interval", type=float, default=1.0)
    p.set_defaults(handler=jobs_watch)

    adapter = subparsers.add_parser("adapter", help="trained adapters").add_subparsers(dest="adapter_command",
                                                                                        required=True)
    p = adapter.add_parser("download", help="download a job's adapter zip and check its sha256")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", type=Path, help="zip path (default <job id>-adapter.zip)")
    p.add_argument("--checkpoint", help="an intermediate checkpoint (id or step) instead of the final adapter")
    p.add_argument("--extract", type=Path, help="also unpack it into this directory (PEFT loads it from there)")
    p.set_defaults(handler=adapter_download)


def _list_parser(group: Any, help_text: str, handler: Any) -> None:
    p = group.add_parser("list", help=help_text)
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--after", help="the last id of the previous page")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(handler=handler)


def _client() -> Any:
    from drlora_cli.client import Client

    return Client()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} must look like NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _run(fn: Any) -> int:
    import httpx

    from drlora_cli.client import ClientError, base_url

    try:
        fn()
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"error: cannot reach {base_url()} ({e}); is the service running? (DRLORA_BASE_URL)", file=sys.stderr)
        return 1
    return 0


def files_upload(args: argparse.Namespace) -> int:
    return _run(lambda: _print(_client().upload(args.path, args.purpose)))


def jobs_create(args: argparse.Namespace) -> int:
    hyperparameters = {k: _parse_value(v) for k, v in _pairs(args.hyperparameters, "--set").items()}
    body: dict[str, Any] = {"model": args.model, "training_file": args.training_file,
                            "method": {"type": args.method, args.method: {"hyperparameters": hyperparameters}}}
    for key, value in (("validation_file", args.validation_file), ("suffix", args.suffix), ("seed", args.seed)):
        if value is not None:
            body[key] = value
    if args.metadata:
        body["metadata"] = _pairs(args.metadata, "--metadata")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    outcome: dict[str, Any] = {}

    def create() -> None:
        client = _client()
        job = client.post("/fine_tuning/jobs", json=body, headers=headers)
        if not args.watch:
            _print(job)
            return
        from drlora_cli.watch import watch

        print(f"created {job['id']} ({args.method} on {job['model']})")
        outcome.update(watch(client, job["id"]))

    return _run(create) or _watch_exit(outcome)


def _watch_exit(job: dict[str, Any]) -> int:
    from drlora_cli.watch import EXIT_CODES

    return EXIT_CODES.get(job.get("status", JobStatus.succeeded), 1)


def _list(path: str, args: argparse.Namespace, columns: list[str],
          row: Any = lambda item: item) -> int:
    """A list command: one page of `path` as a table of `columns` (each item through `row`), or `--json`."""
    from drlora_cli.tables import print_rows

    def show() -> None:
        page = _client().get(path, limit=args.limit, after=args.after)
        if args.json:
            _print(page)
            return
        more = f"(more: --after {page['data'][-1]['id']})" if page["has_more"] and page["data"] else None
        print_rows([row(item) for item in page["data"]], columns, more=more)

    return _run(show)


def files_list(args: argparse.Namespace) -> int:
    return _list("/files", args, ["id", "filename", "bytes", "purpose", "status", "created_at"])


def files_delete(args: argparse.Namespace) -> int:
    def delete() -> None:
        _client().request("DELETE", f"/files/{args.file_id}")
        print(f"deleted {args.file_id}")

    return _run(delete)


def jobs_list(args: argparse.Namespace) -> int:
    def row(job: dict[str, Any]) -> dict[str, Any]:
        progress = job["progress"]
        return {**job, "method": (job.get("method") or {}).get("type", ""),
                "step": f"{progress['step']}/{progress['total_steps'] or '?'}"}

    return _list("/fine_tuning/jobs", args, ["id", "status", "method", "model", "step", "created_at",
                                             "fine_tuned_model"], row)


def jobs_get(args: argparse.Namespace) -> int:
    from drlora_cli.tables import cell

    def show() -> None:
        job = _client().get(f"/fine_tuning/jobs/{args.job_id}")
        if args.json:
            _print(job)
            return
        progress = job["progress"]
        fields = {"id": job["id"], "status": job["status"], "model": job["model"],
                  "method": (job.get("method") or {}).get("type", ""),
                  "progress": f"{progress['step']}/{progress['total_steps'] or '?'}",
                  "created_at": cell("created_at", job["created_at"]),
                  "finished_at": cell("finished_at", job["finished_at"]),
                  "fine_tuned_model": job["fine_tuned_model"] or "", "training_file": job["training_file"],
                  "validation_file": job["validation_file"] or "",
                  "hyperparameters": " ".join(f"{k}={v}" for k, v in sorted(job["hyperparameters"].items())),
                  "error": f"{job['error']['code']}: {job['error']['message']}" if job.get("error") else ""}
        for name, value in fields.items():
            print(f"{name:<17} {value}")

    return _run(show)


def jobs_action(args: argparse.Namespace) -> int:
    return _run(lambda: _print(_client().post(f"/fine_tuning/jobs/{args.job_id}/{args.action}")))


def jobs_watch(args: argparse.Namespace) -> int:
    from drlora_cli.watch import watch

    outcome: dict[str, Any] = {}
    code = _run(lambda: outcome.update(watch(_client(), args.job_id, args.interval)))
    return code or _watch_exit(outcome)


def adapter_download(args: argparse.Namespace) -> int:
    dest: Path = args.output or Path(f"{args.job_id}-adapter.zip")

    def download() -> None:
        from drlora_cli.client import download_adapter

        actual = download_adapter(_client(), args.job_id, dest, args.checkpoint)
        print(f"{dest}  sha256 {actual}")
        if args.extract:
            with zipfile.ZipFile(dest) as zf:
                zf.extractall(args.extract)
            print(f"extracted to {args.extract}")

    return _run(download)
