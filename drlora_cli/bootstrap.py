"""Setting up a deployment: migrate the database, register base models, create API keys."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from drlora_core.model_facts import ModelFactsError, read_model_facts
from service.db import make_engine, make_sessionmaker, transaction
from service.ids import now
from service.keys import NewKey, create_key
from service.settings import Settings
from service.tables import ApiKey, RegisteredModel, Tenant

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def migrate(settings: Settings) -> None:
    settings.make_private_dirs()
    command.upgrade(alembic_config(settings.sqlalchemy_url), "head")


def check_model(path: Path) -> None:
    """Refuses (SystemExit) a directory whose config.json names no MoE family the engine supports, saying what the
    file holds, so that `drlora models add` fails at once rather than every job on the model later."""
    try:
        facts = read_model_facts(path)
    except ModelFactsError as e:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        found = (f"model_type {config.get('model_type')!r}, architectures {config.get('architectures')}"
                 if isinstance(config, dict) else "no JSON object")
        raise SystemExit(f"{path} has no MoE layer drlora supports (found {found}): {e}") from None
    if facts.moe_layers < 1:
        raise SystemExit(f"{path}: {facts.model_type} with no MoE layer among its {facts.layers} layers")


def register_model(settings: Settings, model_id: str, path: Path, owned_by: str = "system") -> None:
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is not a Hugging Face model directory (no config.json)")
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            row = session.get(RegisteredModel, model_id)
            if row is None:
                session.add(RegisteredModel(id=model_id, path=str(path.resolve()), owned_by=owned_by,
                                            created_at=now()))
            else:
                row.path, row.owned_by = str(path.resolve()), owned_by
    finally:
        engine.dispose()


def register_demo_model(settings: Settings) -> bool:
    """Registers the bundled demo model; False (with a warning) when this installation does not carry it."""
    from drlora_core.assets import DEMO_MODEL_ID, demo_model_dir  # pathlib only: no torch

    if not (demo_model_dir() / "config.json").is_file():
        print(f"warning: the demo model is missing at {demo_model_dir()}; register base models with "
              "`drlora models add ID DIR`", file=sys.stderr)
        return False
    register_model(settings, DEMO_MODEL_ID, demo_model_dir())
    return True


def new_key(settings: Settings, tenant: str) -> NewKey:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return create_key(session, tenant)
    finally:
        engine.dispose()


def first_key(settings: Settings, key_file: Path, tenant: str = "default") -> str | None:
    """Creates a key on first start and writes it to `key_file` (mode 600); returns it, or None if one existed."""
    if key_file.is_file() and key_file.read_text().strip():
        return None
    key = new_key(settings, tenant).key
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def model_rows(settings: Settings) -> list[dict[str, object]]:
    """The registered base models: id, owned_by, path, created_at."""
    query = select(RegisteredModel.id, RegisteredModel.owned_by, RegisteredModel.path, RegisteredModel.created_at)
    return _rows(settings, query.order_by(RegisteredModel.id))


def key_rows(settings: Settings) -> list[dict[str, object]]:
    """Every API key: id, tenant, prefix (never the key or its hash), created_at, revoked_at."""
    query = (select(ApiKey.id, Tenant.name.label("tenant"), ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at)
             .join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(Tenant.name, ApiKey.created_at))
    return _rows(settings, query)


def _rows(settings: Settings, query: Any) -> list[dict[str, object]]:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            return [dict(row._mapping) for row in session.execute(query)]
    finally:
        engine.dispose()
