"""One decision of "the database is unreachable" (`service.db.is_unreachable`), used by the API's 503 handler (and so
`/readyz`) and by the worker's retried writes: a server that cannot be reached is a retryable outage; a statement
the server refused is not."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from api.main import create_app
from service.db import is_unreachable, make_engine
from tests.support.service import free_port, make_settings

pytestmark = pytest.mark.timeout(60)


def closed_port_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"


def raised(url: str, sql: str) -> BaseException:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    except DBAPIError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


def test_a_server_nobody_listens_for_is_unreachable() -> None:
    assert is_unreachable(raised(closed_port_url(), "SELECT 1"))


def test_a_refused_statement_is_not_unreachable(pg_url: str) -> None:
    assert not is_unreachable(raised(pg_url, "SELECT * FROM no_such_table"))
    assert not is_unreachable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_unreachable(ValueError("not a database error"))


def test_readyz_and_routes_answer_503_while_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", closed_port_url(), "memory://")
    with TestClient(create_app(settings, sweep=False)) as client:
        for r in (client.get("/readyz"), client.get("/v1/models", headers={"Authorization": "Bearer sk-x"})):
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable" and r.headers["Retry-After"] == "1"
        assert client.get("/healthz").status_code == 200
