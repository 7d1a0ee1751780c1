"""Private Redis and PostgreSQL servers for the tests that stop, restart, flush or cut off their broker or database.

The shared servers on 5432 and 6379 carry other people's test runs, so a test that harms its server gets one of its
own: a real `redis-server` or a real PostgreSQL cluster (initdb into a temporary folder owned by `postgres`) on a free
port, started as our child process and ended by its pid. Redis keeps nothing on disk, so a restart empties it, as a
real cache node that lost its memory would.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support.service import Process, free_port, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One `redis-server` on a private port; `stop`, `start` and `flushall` are what the tests do to it."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.logs = logs
        self.proc: Process | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        assert self.proc is None, "already running"
        self._starts += 1
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no"]
        self.proc = Process(args, {}, self.logs / f"redis-{self.port}-{self._starts}.log")
        wait_until(self._answers, 20, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM by pid: the server closes every client connection, as a restart or crash would."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flushall(self) -> None:
        with contextlib.closing(self.client()) as c:
            c.flushall()

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.proc.poll() is None, "redis-server exited"
        try:
            with contextlib.closing(self.client()) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False


class PostgresServer:
    """A PostgreSQL 15 cluster of our own: initdb once, then start, stop and restart the postmaster by its pid."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that is root's, mode 700, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="drlora-pg-"))
        shutil.chown(self.root, PG_USER, PG_USER)
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: Process | None = None
        self._starts = 0

    def init(self) -> None:
        Process([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions"], {"LANG": "C"}, self.root / "initdb.log",
                cwd=self.root, user=PG_USER).wait_ok(120)

    def start(self) -> None:
        assert self.proc is None, "already running"
        self._starts += 1
        args = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "shared_buffers=32MB"]
        self.proc = Process(args, {"LANG": "C"}, self.root / f"postgres-{self._starts}.log", cwd=self.root,
                            user=PG_USER)
        wait_until(self._answers, 60, what=f"PostgreSQL on port {self.port}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster): sessions are ended, as `pg_ctl restart -m fast` does."""
        if self.proc is not None:
            self.proc.stop(signal.SIGINT, timeout=60)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database; its SQLAlchemy URL."""
        name = f"drlora_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{name}"

    def terminate_connections(self, url: str) -> int:
        """pg_terminate_backend on every session of the URL's database; how many were ended."""
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=5) as admin:
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
        return sum(1 for (ended,) in rows if ended)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.proc.poll() is None, (
            f"postgres exited:\n{self.proc.output() if self.proc else ''}")
        try:
            with psycopg.connect(self.admin_url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PostgresServer]:
    """One private cluster for the session; a test that stops it must leave it running again."""
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()

