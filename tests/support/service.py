"""Helpers for the service tests: settings for a test profile, processes we start and kill by pid, polling."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# A fast test profile: heartbeats every 0.5 s, a 4 s lease, a sweep every second.
FAST = dict(heartbeat_interval_s=0.5, lease_s=4.0, sweep_interval_s=1.0, redispatch_after_s=3.0,
            default_checkpoint_every=2, device="cpu", log_level="warning")


def make_settings(data_dir: Path, database_url: str = "", broker_url: str = "", **extra: Any) -> Settings:
    values = {"task_queue": f"drlora-test-{os.getpid()}", **FAST, **extra}
    return Settings(data_dir=data_dir, database_url=database_url, broker_url=broker_url, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to build the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRLORA_")}
    for name, value in settings.model_dump().items():
        if value is not None and value != "":
            env[f"DRLORA_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards: for a test whose rows must meet no other test's
    API (whose sweep would dispatch them) or that needs an empty schema. Yields the SQLAlchemy URL."""
    import secrets

    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Process:
    """A child process whose output goes to a log file; `stop` ends it and any children by their pids."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO,
                 user: str | None = None) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     user=user)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """Child pids, of every thread (a child started from a thread is listed under that thread's task)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
        return pids

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        children = self.children()
        self.send(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in children:  # a child that outlived its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log_file.close()
        return self.proc.returncode

    def wait_ok(self, timeout: float) -> None:
        """For a short command: wait for it (killed past `timeout`) and require exit status 0."""
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.stop(signal.SIGKILL)
        assert code == 0, f"{self.proc.args!r} exited with {code}:\n{self.output()}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def wait_ready(proc: Process, url: str, timeout: float, what: str) -> None:
    """Waits until the process answers /readyz at `url`; fails at once, with its output, if it exits."""

    def ready() -> bool:
        assert proc.proc.poll() is None, f"{what} exited:\n{proc.output()}"
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, what=f"{what} to answer /readyz")


def start_api(settings: Settings, port: int, log: Path) -> Process:
    proc = Process([sys.executable, "-m", "drlora_cli.main", "api", "--port", str(port)], settings_env(settings), log)
    wait_ready(proc, f"http://127.0.0.1:{port}", 60, "the API")
    return proc


def start_serve(home: Path, port: int, **extra_env: str) -> Process:
    """`drlora serve` as a newcomer starts it: `HOME` is `home` (so `~/.drlora` is fresh) and no `DRLORA_*` variable
    is set but `extra_env`; its output goes to home/serve.log. Stop it with SIGINT, as Ctrl-C would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRLORA_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **extra_env)
    proc = Process([sys.executable, "-m", "drlora_cli.main", "serve", "--port", str(port)], env, home / "serve.log",
                   cwd=home)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", 90, "drlora serve")
    except BaseException:
        proc.stop(signal.SIGINT, timeout=90)
        raise
    return proc


def start_worker(settings: Settings, log: Path, extra_env: dict[str, str] | None = None) -> Process:
    return Process([sys.executable, "-m", "drlora_cli.main", "worker"], {**settings_env(settings), **(extra_env or {})},
                   log)


def demo_paths() -> tuple[Path, Path, Path]:
    """(model dir, train file, validation file) of the bundled demo."""
    from drlora_core.assets import demo_model_dir, demo_train_file, demo_val_file

    return demo_model_dir(), demo_train_file(), demo_val_file()


# Small and fast on a CPU: growth every 2 steps, a checkpoint every 2 steps.
QUICK = {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "r_init": 2, "r_target": 4, "r_max": 8,
         "growth_interval": 2, "checkpoint_every": 2, "warmup_ratio": 0.0, "max_seq_len": 64}


def dr_lora(**overrides: Any) -> dict[str, Any]:
    return {"type": "dr_lora", "dr_lora": {"hyperparameters": {**QUICK, **overrides}}}


class Api:
    """A thin authenticated httpx client for assertions on raw responses."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return self.http.post(path, json=json)

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/fine_tuning/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            assert job["status"] != "failed" or "failed" in statuses, job["error"]
            return job if job["status"] in statuses else None

        return wait_until(reached, timeout, interval=0.3, what=f"{job_id} to be {'/'.join(statuses)}")

    def wait_step(self, job_id: str, step: int, timeout: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            assert job["status"] in ("queued", "running"), job
            return job if job["progress"]["step"] >= step else None

        return wait_until(reached, timeout, interval=0.2, what=f"{job_id} to reach step {step}")


def loads_torch(pid: int) -> bool:
    """Whether a running process has torch's native libraries mapped (importing torch maps libtorch/libc10)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "libc10" in maps


def job_row(factory: Any, job_id: str) -> Any:
    """The job's database row, read in a session of its own."""
    from service.tables import Job

    with factory() as s:
        return s.get_one(Job, job_id)


def adapter_count(factory: Any, job_id: str) -> int:
    """How many final adapters were published for the job (exactly one after success)."""
    from sqlalchemy import func, select

    from service.tables import Artifact

    with factory() as s:
        return s.scalar(select(func.count()).select_from(Artifact).where(
            Artifact.job_id == job_id, Artifact.kind == "adapter")) or 0


class Cluster:
    """One API process on `settings`, the workers a test starts, a database session factory and an uploaded demo
    training file: what a fault test needs to submit jobs, hurt processes and read the rows back."""

    def __init__(self, settings: Settings, api: Api, api_proc: Process, logs: Path) -> None:
        from service.db import make_engine, make_sessionmaker

        self.settings, self.api, self.api_proc, self.logs = settings, api, api_proc, logs
        self.workers: list[Process] = []
        self.engine = make_engine(settings.sqlalchemy_url)
        self.factory = make_sessionmaker(self.engine)
        with open(demo_paths()[1], "rb") as f:
            self.file_id = api.http.post("/v1/files", files={"file": ("train.jsonl", f)},
                                         data={"purpose": "fine-tune"}).json()["id"]

    def worker(self, settings: Settings | None = None, extra_env: dict[str, str] | None = None) -> Process:
        """A worker process, on the cluster's settings unless given others (e.g. a slower heartbeat)."""
        proc = start_worker(settings or self.settings, self.logs / f"worker-{len(self.workers)}.log", extra_env)
        self.workers.append(proc)
        return proc

    def create(self, **hyperparameters: object) -> str:
        r = self.api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": self.file_id,
                                                   "method": dr_lora(**hyperparameters)})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def row(self, job_id: str) -> Any:
        return job_row(self.factory, job_id)

    def adapters(self, job_id: str) -> int:
        return adapter_count(self.factory, job_id)

    def messages(self, job_id: str) -> list[str]:
        events = self.api.get(f"/v1/fine_tuning/jobs/{job_id}/events", limit=1000).json()["data"]
        return [e["message"] for e in events]

    def attempts_started(self, job_id: str) -> list[str]:
        """The "Attempt N started on worker W" events: one per training run the job had."""
        return [m for m in self.messages(job_id) if m.startswith("Attempt ")]

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(signal.SIGKILL)
        self.api_proc.stop()
        self.engine.dispose()


@contextlib.contextmanager
def running_cluster(settings: Settings, logs: Path) -> Iterator[Cluster]:
    """Migrate, register the demo model, start the API and make a key; every process is ended by pid afterwards."""
    from drlora_cli.bootstrap import migrate, new_key, register_model

    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    port = free_port()
    api_proc = start_api(settings, port, logs / "api.log")
    try:
        cluster = Cluster(settings, Api(f"http://127.0.0.1:{port}", new_key(settings, f"t-{logs.name}").key),
                          api_proc, logs)
    except BaseException:
        api_proc.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.close()
