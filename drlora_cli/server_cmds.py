"""Production commands: `drlora api`, `drlora worker`, `drlora db upgrade`, `drlora keys create|revoke|list`,
`drlora models add|list`. Settings come from `DRLORA_*` variables; flags override the few that differ per process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.logsetup import configure_logging
from service.settings import Settings

# uvicorn logs through our handler (no config of its own); api/observe.py writes the access lines, with request ids
UVICORN_LOGGING: dict[str, Any] = {"log_config": None, "access_log": False}


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                                   ("data_dir", getattr(args, "data_dir", None))) if v is not None}
    return Settings(**overrides)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("api", help="run the HTTP API (production; PostgreSQL + Redis from DRLORA_*)")
    p.add_argument("--host", help="bind address (default DRLORA_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default DRLORA_PORT or 8000)")
    p.set_defaults(handler=run_api)

    p = subparsers.add_parser("worker", help="run one training worker (one per GPU); `worker health` checks it")
    p.add_argument("action", nargs="?", choices=("run", "health"), default="run",
                   help="health: exit 0 if this host's worker touched its liveness file recently (a healthcheck)")
    p.add_argument("--max-age", type=float, default=60.0, help="health: seconds the liveness file may be old")
    p.set_defaults(handler=run_worker)

    db = subparsers.add_parser("db", help="database administration").add_subparsers(dest="db_command", required=True)
    p = db.add_parser("upgrade", help="apply the migrations (alembic upgrade head)")
    p.set_defaults(handler=run_db_upgrade)

    keys = subparsers.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("create", help="create an API key for a tenant (created on first use); shown once")
    p.add_argument("--tenant", required=True)
    p.set_defaults(handler=run_keys_create)
    p = keys.add_parser("revoke", help="revoke an API key by its id (key-...)")
    p.add_argument("key_id")
    p.set_defaults(handler=run_keys_revoke)
    p = keys.add_parser("list", help="every API key: id, tenant, prefix, created, revoked (never the key)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_keys_list)

    models = subparsers.add_parser("models", help="base models").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("add", help="register a local Hugging Face model directory as a base model")
    p.add_argument("id", help="the model id clients pass as `model`")
    p.add_argument("dir", type=Path, help="directory with config.json, *.safetensors and the tokenizer")
    p.add_argument("--owned-by", default="system")
    p.set_defaults(handler=run_models_add)
    p = models.add_parser("list", help="the registered base models and their directories")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_models_list)


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format or "json")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                **UVICORN_LOGGING)
    return 0


def run_worker(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.action == "health":
        from worker.alive import alive_path, check_alive

        healthy, why = check_alive(alive_path(settings.data_dir), args.max_age)
        print(why)
        return 0 if healthy else 1
    from worker.main import run_worker as start

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format or "json")
    start(settings)
    return 0


def run_db_upgrade(args: argparse.Namespace) -> int:
    from drlora_cli.bootstrap import migrate

    migrate(settings_from(args))
    print("database is at the latest migration")
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    from drlora_cli.bootstrap import new_key

    key = new_key(settings_from(args), args.tenant)
    print(f"tenant {args.tenant} ({key.tenant_id}), key id {key.key_id}; the key is shown only now:")
    print(key.key)
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from service.db import make_engine, make_sessionmaker, transaction
    from service.keys import revoke_key

    engine = make_engine(settings_from(args).sqlalchemy_url)
    with transaction(make_sessionmaker(engine)) as session:
        revoked = revoke_key(session, args.key_id)
    print(f"revoked {args.key_id}" if revoked else f"no active key {args.key_id}")
    return 0 if revoked else 1


def run_models_add(args: argparse.Namespace) -> int:
    from drlora_cli.bootstrap import check_model, register_model

    check_model(args.dir)
    register_model(settings_from(args), args.id, args.dir, args.owned_by)
    print(f"registered base model {args.id} -> {args.dir.resolve()}")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    from drlora_cli.bootstrap import key_rows
    from drlora_cli.tables import print_rows

    rows = key_rows(settings_from(args))
    print_rows(rows, ["id", "tenant", "prefix", "created_at", "revoked_at"], args.json)
    return 0


def run_models_list(args: argparse.Namespace) -> int:
    from drlora_cli.bootstrap import model_rows
    from drlora_cli.tables import print_rows

    print_rows(model_rows(settings_from(args)), ["id", "owned_by", "created_at", "path"], args.json)
    return 0
