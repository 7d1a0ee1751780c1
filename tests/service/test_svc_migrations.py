"""Migrations: upgrade head on an empty PostgreSQL and SQLite, no drift from the models, downgrade and upgrade again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from drlora_cli.bootstrap import alembic_config
from service.db import make_engine
from service.tables import Base
from tests.support.service import fresh_pg_database

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with fresh_pg_database("drlora_migrate") as url:
        yield url


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, Any]:
    """Every table's columns (name, type, nullable), indexes, unique constraints and foreign keys."""
    engine = make_engine(url)
    try:
        insp = inspect(engine)
        return {table: {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                                   for f in insp.get_foreign_keys(table)),
        } for table in insp.get_table_names()}
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_check_downgrade_upgrade(empty_url: str) -> None:
    config = alembic_config(empty_url)
    command.upgrade(config, "head")
    assert tables(empty_url) == set(Base.metadata.tables)
    command.check(config)  # raises if the models and the migrations differ
    at_head = snapshot(empty_url)
    head = ScriptDirectory.from_config(config).get_revision("head")
    assert head is not None
    command.downgrade(config, "-1")
    assert current_revision(empty_url) == head.down_revision
    if head.down_revision is None:  # downgrading the first migration leaves an empty database
        assert tables(empty_url) == set()
    command.upgrade(config, "head")
    assert snapshot(empty_url) == at_head  # the round trip restores the same schema, on both databases
    command.check(config)
