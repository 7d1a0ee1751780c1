"""The same API tests on the embedded stack: SQLite (WAL) and the filesystem broker."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service.test_svc_api import (  # noqa: F401  (collected here again, with this module's fixtures)
    dataset_client,
    test_bad_datasets_are_refused_with_their_line_and_nothing_is_kept,
    test_cancel_pause_resume_of_a_queued_job,
    test_create_job_defaults_and_shape,
    test_files_upload_list_content_delete,
    test_idempotency_key,
    test_jobs_list_pagination_and_metadata_filter,
)

from api.main import create_app
from drlora_cli.bootstrap import migrate, new_key, register_model
from service.settings import Settings
from tests.support.service import make_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sqlite_settings(tmp_path_factory: pytest.TempPathFactory, fake_model_dir: Path) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("sqlite-data"))
    migrate(settings)
    register_model(settings, "test-model", fake_model_dir)
    assert settings.is_sqlite and settings.broker == "filesystem://"
    return settings


@pytest.fixture(scope="module")
def api_settings(sqlite_settings: Settings) -> Settings:
    return sqlite_settings


@pytest.fixture(scope="module")
def client(sqlite_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings, sweep=False)) as c:
        yield c


@pytest.fixture
def make_key(sqlite_settings: Settings):  # type: ignore[no-untyped-def]
    return lambda: new_key(sqlite_settings, f"tenant-{secrets.token_hex(4)}").key


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_settings: Settings) -> None:
    from sqlalchemy import text

    from service.db import make_engine

    engine = make_engine(sqlite_settings.sqlalchemy_url)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
