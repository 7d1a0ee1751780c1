"""Shared fixtures. Engine tests get one torch thread and a fixed seed; service, e2e and fault tests get a fresh
PostgreSQL database per session (dropped after), a dedicated Redis DB number (flushed before and after) and
per-test tenants. A missing server fails the run; nothing is skipped."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from drlora_cli.bootstrap import migrate, new_key, register_model
from service.settings import Settings
from tests.support.service import make_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    import torch

    # Tiny models: one thread is faster than two fighting the worker processes the service tests start.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`realshape` tests run only when asked for by name (`-m realshape`): too big for every CI run."""
    if "realshape" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("realshape") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(autouse=True)
def _deterministic():
    import torch

    torch.manual_seed(0)
    yield

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# One Redis DB number per concurrent test run (it is flushed): set DRLORA_TEST_REDIS_DB to run two at once.
REDIS_DB = int(os.environ.get("DRLORA_TEST_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"drlora_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is required at 127.0.0.1:5432 (run `make services`): {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is required at 127.0.0.1:6379 (run `make services`): {e}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def fake_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registered base model for API-only tests (no worker reads it)."""
    path = tmp_path_factory.mktemp("fake-model")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture(scope="session")
def pg_settings(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
                fake_model_dir: Path) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("pg-data"), pg_url, redis_url)
    migrate(settings)
    register_model(settings, "test-model", fake_model_dir)
    return settings


@pytest.fixture
def make_key(pg_settings: Settings):  # type: ignore[no-untyped-def]
    def make(settings: Settings = pg_settings, tenant: str | None = None) -> str:
        return new_key(settings, tenant or f"tenant-{secrets.token_hex(4)}").key

    return make
