"""Helpers for the process-level tests: settings for a test profile, processes we start and kill by pid, and waits.

Waiting on a job follows what can be observed, never a fixed wall-clock budget: `wait_progress` polls until a
condition holds and fails only when nothing observable (status, attempt, step, heartbeat, events, the workers' logs)
has changed for a stall bound. That bound is `Pace.stall_s`: a floor that covers a process starting up on a loaded
machine, raised to a multiple of the slowest training step measured so far. A slow machine makes every wait longer;
only a job that stopped moving fails one. `wait_until` (a plain deadline) remains for conditions that are not a job's
progress, such as a server answering after it was started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# A fast test profile: heartbeats every 0.5 s, a 10 s lease, a sweep every second. The lease is 20 heartbeats: on a
# machine shared with other work a live worker's heartbeat thread can wait seconds for the CPU (a 4 s lease lost
# live workers at a load of 5 per core), and the server ends a worker session idle in a transaction for half a
# lease, so a lease much shorter than this fails correct code on a loaded CI machine.
FAST = dict(heartbeat_interval_s=0.5, lease_s=10.0, sweep_interval_s=1.0, redispatch_after_s=3.0,
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
    env["OMP_NUM_THREADS"] = "1"  # two torch threads fighting the test process on 2 cores run ~50x slower
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


# Nothing observable may stay unchanged for longer than this before a step has been timed: a worker importing torch
# and loading the model, a lease running out and the sweep requeueing, on a machine shared with other work.
STALL_FLOOR_S = 180.0
# pytest-timeout's bound for a process-level test: only a guard against a hang no wait can see (a call blocked
# forever); the waits fail first, and with a better message, when a job stops moving.
HANG_GUARD_S = 1800
# Once steps are timed, the bound is this many of the slowest step seen (a checkpoint step included).
STALL_STEPS = 40


class Pace:
    """The slowest training step seen on this machine so far, measured from the step counter's advances; from it,
    how long a wait may see nothing change before it calls the job stuck."""

    def __init__(self) -> None:
        self.slowest_step_s = 0.0
        self._last: tuple[int, float] | None = None  # (step, when it was first seen)

    def see(self, step: int | None) -> None:
        if step is None:
            return
        now = time.monotonic()
        if self._last is not None and step > self._last[0]:
            per_step = (now - self._last[1]) / (step - self._last[0])
            self.slowest_step_s = max(self.slowest_step_s, per_step)
        if self._last is None or step != self._last[0]:  # a new attempt may start again from a lower step
            self._last = (step, now)

    @property
    def stall_s(self) -> float:
        return max(STALL_FLOOR_S, STALL_STEPS * self.slowest_step_s)

    def allow(self, seconds: float, steps: float) -> float:
        """A bound for an assertion on elapsed time: `seconds`, or `steps` of the slowest step if that is longer."""
        return max(seconds, steps * self.slowest_step_s)


def wait_progress(observe: Callable[[], tuple[T | None, Hashable, int | None]], pace: Pace, what: str,
                  interval: float = 0.2) -> T:
    """Poll `observe()` -> (result, progress, step) until the result is truthy. `progress` is anything whose
    change shows the job is moving; `step` (or None) feeds the pace. Fails after `pace.stall_s` without a change."""
    last: Any = object()
    changed = time.monotonic()
    while True:
        result, progress, step = observe()
        if result:
            return result
        pace.see(step)
        now = time.monotonic()
        if progress != last:
            last, changed = progress, now
        elif now - changed > pace.stall_s:
            raise AssertionError(
                f"waiting for {what}: nothing progressed for {now - changed:.0f} s (bound: the larger of "
                f"{STALL_FLOOR_S:.0f} s and {STALL_STEPS} x the slowest step, {pace.slowest_step_s:.2f} s); "
                f"last seen: {progress!r}")
        time.sleep(interval)


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


def wait_ready(proc: Process, url: str) -> None:
    """Until the server `proc` started answers `/readyz`; fails at once if it exits."""
    def ready() -> bool:
        assert proc.proc.poll() is None, f"{proc.proc.args!r} exited:\n{proc.output()}"
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, STALL_FLOOR_S, what=f"{url} to answer /readyz")


def start_api(settings: Settings, port: int, log: Path) -> Process:
    proc = Process([sys.executable, "-m", "drlora_cli.main", "api", "--port", str(port)], settings_env(settings), log)
    wait_ready(proc, f"http://127.0.0.1:{port}")
    return proc


def start_serve(home: Path, port: int, **extra_env: str) -> Process:
    """`drlora serve` as a newcomer starts it: `HOME` is `home` (so `~/.drlora` is fresh) and no `DRLORA_*` variable
    is set but `extra_env`; its output goes to home/serve.log. Stop it with SIGINT, as Ctrl-C would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRLORA_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra_env)
    proc = Process([sys.executable, "-m", "drlora_cli.main", "serve", "--port", str(port)], env, home / "serve.log",
                   cwd=home)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
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
        self.pace = Pace()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections (left open, they surface as a ResourceWarning in some later test)."""
        self.http.close()

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return self.http.post(path, json=json)

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/fine_tuning/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, job_id: str, until: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll the job until `until(job)` holds, for as long as its status or progress keeps changing."""
        def observe() -> tuple[dict[str, Any] | None, Hashable, int]:
            job = self.job(job_id)
            progress = (job["status"], repr(sorted(job["progress"].items())))
            return (job if until(job) else None), progress, int(job["progress"]["step"])

        return wait_progress(observe, self.pace, f"{job_id}: {what}")

    def wait_status(self, job_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
        def reached(job: dict[str, Any]) -> bool:
            assert job["status"] != "failed" or "failed" in statuses, job["error"]
            return job["status"] in statuses

        return self.wait_job(job_id, reached, f"to be {'/'.join(statuses)}")

    def wait_done(self, path: str, what: str) -> dict[str, Any]:
        """Poll a worker-built resource (an export, a generation, a profile) until it leaves queued/running, for as
        long as its status, progress or stage keeps changing within the stall bound."""
        def observe() -> tuple[dict[str, Any] | None, Hashable, None]:
            got = self.get(path).json()
            done = got.get("status") not in ("queued", "running")
            return (got if done else None), (got.get("status"), got.get("progress"), got.get("stage")), None

        return wait_progress(observe, self.pace, what)

    def wait_step(self, job_id: str, step: int) -> dict[str, Any]:
        def reached(job: dict[str, Any]) -> bool:
            assert job["status"] in ("queued", "running"), job
            return bool(job["progress"]["step"] >= step)

        return self.wait_job(job_id, reached, f"to reach step {step}")


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
        """Every event message of the job, newest first (paged: a fast job can log more than one page)."""
        messages: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000} if after is None else {"limit": 1000, "after": after}
            page = self.api.get(f"/v1/fine_tuning/jobs/{job_id}/events", **params).json()
            messages += [e["message"] for e in page["data"]]
            if not page["has_more"] or not page["data"]:
                return messages
            after = page["data"][-1]["id"]

    def wait(self, job_id: str, until: Callable[[], T], what: str) -> T:
        """Poll `until()` while the job moves: its row (status, attempt, step, heartbeat), its newest event and the
        workers' logs are the progress; the row's step feeds the pace shared with `self.api`'s waits."""
        from sqlalchemy import func, select

        from service.tables import Job, JobEvent

        def observe() -> tuple[T | None, Hashable, int]:
            with self.factory() as s:
                row = s.get_one(Job, job_id)
                newest = s.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id))
                progress = (row.status, row.attempt, row.step, row.heartbeat_at, newest,
                            tuple(w.log.stat().st_size for w in self.workers))
            done = until()
            assert done or row.status not in ("failed", "cancelled"), (
                f"{job_id} ended {row.status} while waiting for {what}: {row.error}")
            return done, progress, row.step

        return wait_progress(observe, self.api.pace, f"{job_id}: {what}")

    def attempts_started(self, job_id: str) -> list[str]:
        """The "Attempt N started on worker W" events: one per training run the job had."""
        return [m for m in self.messages(job_id) if m.startswith("Attempt ")]

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(signal.SIGKILL)
        self.api.close()
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


@contextlib.contextmanager
def api_and_worker(pg_url: str, redis_url: str, data: Path, tenant: str) -> Iterator[tuple[str, str, int]]:
    """A migrated database with the demo model registered, an API process and one worker on their own queue:
    yields (url, an API key of `tenant`, the API's pid)."""
    from drlora_cli.bootstrap import migrate, new_key, register_model

    settings = make_settings(data, pg_url, redis_url, task_queue=f"drlora-e2e-{data.name}")
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    port = free_port()
    api = start_api(settings, port, data / "api.log")
    worker = start_worker(settings, data / "worker.log")
    try:
        yield f"http://127.0.0.1:{port}", new_key(settings, tenant).key, api.pid
    finally:
        worker.stop()
        api.stop()
