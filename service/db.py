"""Engines and sessions for PostgreSQL (production) and SQLite (embedded).

SQLite runs in WAL mode so that the API's readers never wait for the worker's writer, with a busy timeout so that
two writers queue instead of failing with "database is locked", and with foreign keys switched on. Python's sqlite3
driver begins a transaction only before the first write, so a session that reads and then writes never holds a
read snapshot it must upgrade (the case a busy timeout cannot help with).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, application_name: str = "drlora", idle_in_transaction_s: float | None = None,
                pool_timeout_s: float = 30.0) -> Engine:
    """`idle_in_transaction_s` (PostgreSQL): the server ends a session left that long inside a transaction, so that a
    frozen process (SIGSTOP, a VM pause) cannot hold row locks for as long as it stays frozen. `pool_timeout_s`: how
    long a session waits for a pooled connection before `sqlalchemy.exc.TimeoutError` (the API answers 503)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_timeout=pool_timeout_s,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Pre-ping replaces connections a restart or pg_terminate_backend ended; the connect timeout keeps a request, a
    # heartbeat or the sweep from waiting minutes on TCP retries when the server is unreachable rather than down.
    connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": application_name}
    if idle_in_transaction_s is not None:
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)}"
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_timeout=pool_timeout_s,
                         connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_unreachable(error: BaseException) -> bool:
    """Whether the error says the database could not be reached (a restart, a failover, connections an admin ended)
    rather than that it refused the statement: the API answers the first 503 and the worker retries it."""
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error, OperationalError | InterfaceError))


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises."""
    with factory() as session, session.begin():
        yield session
