"""The pre-flight at create: a dry run answers `drlora estimate --json` without writing anything, the job carries its
estimate, workers report their memory, `create` refuses a job no recent worker holds and names the changes that fit,
`gradient_checkpointing: "auto"` turns on only when that makes the job fit, and the stored config carries
checkpointing to the worker, which enables it."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from drlora_cli.bootstrap import migrate, new_key, register_model
from drlora_cli.main import main
from drlora_core.assets import demo_model_dir, demo_train_file
from drlora_core.config import RunConfig
from service.db import make_engine, make_sessionmaker
from service.preflight import HEADROOM
from service.settings import Settings
from service.tables import Job, JobEvent, Worker
from tests.support.service import fresh_pg_database, make_settings
from worker.alive import start_touching
from worker.capacity import DeviceMemory, Reporter, estimate_here, host_memory

pytestmark = pytest.mark.timeout(180)
DEMO = "drlora-demo-moe"
# A shape whose activations dominate the demo model's estimate, so checkpointing changes it a lot.
SHAPE = {"batch_size": 8, "max_seq_len": 512, "r_init": 2, "r_target": 4, "r_max": 32, "max_steps": 4}


@pytest.fixture(scope="module")
def settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with fresh_pg_database("drlora_preflight") as url:
        s = make_settings(tmp_path_factory.mktemp("preflight"), url, redis_url)
        migrate(s)
        register_model(s, DEMO, demo_model_dir())
        yield s


@pytest.fixture(scope="module")
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.sqlalchemy_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sweep=False)) as c:
        yield c


@pytest.fixture(autouse=True)
def no_workers(factory: sessionmaker[Session]) -> None:
    with factory() as s:
        s.execute(delete(Worker))
        s.commit()


@pytest.fixture
def key(settings: Settings) -> str:
    return new_key(settings, f"tenant-{time.time_ns()}").key


@pytest.fixture
def file_id(client: TestClient, key: str) -> str:
    r = client.post("/v1/files", headers=_auth(key), data={"purpose": "fine-tune"},
                    files={"file": ("train.jsonl", demo_train_file().read_bytes())})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _create(client: TestClient, key: str, file_id: str, dry_run: bool = False, **hp: Any) -> Any:
    body = {"model": DEMO, "training_file": file_id, "dry_run": dry_run,
            "method": {"type": "dr_lora", "dr_lora": {"hyperparameters": hp}}}
    return client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body)


def _peak(client: TestClient, key: str, file_id: str, **hp: Any) -> int:
    r = _create(client, key, file_id, dry_run=True, **hp)
    assert r.status_code == 200, r.text
    return int(r.json()["peak_bytes"])


def _add_worker(factory: sessionmaker[Session], worker_id: str, total: int, kind: str = "cpu",
                seen_ago_s: float = 0.0) -> None:
    with factory() as s:
        seen = time.time() - seen_ago_s
        s.add(Worker(id=worker_id, device=f"test {kind}", kind=kind, total_bytes=total, free_bytes=total,
                     started_at=seen, last_seen_at=seen))
        s.commit()


def _job_count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _between(low: int, high: int) -> int:
    """A total memory that holds `low` but not `high` (with the headroom)."""
    assert low < high
    return int((low + high) / 2 / HEADROOM)


def test_dry_run_answers_the_cli_estimate_and_writes_nothing(client: TestClient, key: str, file_id: str,
                                                            factory: sessionmaker[Session]) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["estimate", "--json", "--device", "cpu", "--batch-size", "4", "--max-seq-len", "128",
                     "--r-init", "2", "--r-target", "4", "--r-max", "16", "--gradient-checkpointing"]) == 0
    cli = json.loads(out.getvalue())
    before = _job_count(factory)
    r = _create(client, key, file_id, dry_run=True, batch_size=4, max_seq_len=128, r_init=2, r_target=4, r_max=16,
                gradient_checkpointing=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in cli} == cli  # the very same estimate, part by part
    assert body["object"] == "fine_tuning.job.estimate"
    assert body["hyperparameters"]["batch_size"] == 4 and body["hyperparameters"]["gradient_checkpointing"] is True
    assert body["fits"] is None and body["workers"] == []  # no worker has reported: nothing decided
    assert _job_count(factory) == before
    assert client.get("/v1/fine_tuning/jobs", headers=_auth(key)).json()["data"] == []


def test_a_dry_run_validates_like_a_create(client: TestClient, key: str, file_id: str) -> None:
    r = _create(client, key, file_id, dry_run=True, r_init=16, r_target=8)
    assert r.status_code == 422 and r.json()["error"]["param"] == "method.dr_lora.hyperparameters.r_init"


def test_the_job_carries_its_estimate_and_says_when_no_worker_was_seen(client: TestClient, key: str,
                                                                       file_id: str) -> None:
    r = _create(client, key, file_id, **SHAPE)
    assert r.status_code == 200, r.text
    job = r.json()
    estimate = job["estimate"]
    assert estimate["peak_bytes"] == _peak(client, key, file_id, **SHAPE)
    assert {"base_weights", "lora_banks", "activations", "logits_and_loss"} <= estimate["parts"].keys()
    assert estimate["device_bytes"] > 0 and estimate["flops_per_token"]["step"] > 0
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=_auth(key)).json()["estimate"] == estimate
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=_auth(key)).json()["data"]
    assert any("No worker has reported" in e["message"] and e["level"] == "warn" for e in events)


def test_create_refuses_a_job_no_recent_worker_holds_and_each_named_way_out_fits(
        client: TestClient, key: str, file_id: str, factory: sessionmaker[Session]) -> None:
    full = _peak(client, key, file_id, **SHAPE, gradient_checkpointing=False)
    checkpointed = _peak(client, key, file_id, **SHAPE, gradient_checkpointing=True)
    _add_worker(factory, "small:1", _between(checkpointed, full))
    _add_worker(factory, "gone:1", 10 * full, seen_ago_s=3600)  # large, but not seen within the window
    before = _job_count(factory)
    r = _create(client, key, file_id, **SHAPE, gradient_checkpointing=False)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("hyperparameters", "insufficient_memory")
    assert "test cpu" in error["message"] and "gradient_checkpointing true" in error["message"]
    assert _job_count(factory) == before
    dry = _create(client, key, file_id, dry_run=True, **SHAPE, gradient_checkpointing=False).json()
    assert dry["fits"] is False and [w["id"] for w in dry["workers"]] == ["small:1"]
    named = {item.split()[0]: int(item.split()[1]) if item.split()[1].isdigit() else True for item in dry["advice"]}
    assert {"gradient_checkpointing", "batch_size", "max_seq_len"} <= named.keys()
    for name, value in named.items():  # every way out the message names really fits
        r = _create(client, key, file_id, **{**SHAPE, "gradient_checkpointing": False, name: value})
        assert r.status_code == 200, (name, value, r.text)
    _add_worker(factory, "large:1", 2 * full)
    assert _create(client, key, file_id, **SHAPE, gradient_checkpointing=False).status_code == 200


def test_auto_checkpointing_turns_on_only_when_it_makes_the_job_fit(
        client: TestClient, key: str, file_id: str, factory: sessionmaker[Session], settings: Settings) -> None:
    def decided() -> bool:
        r = _create(client, key, file_id, **SHAPE)  # gradient_checkpointing defaults to "auto"
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["estimate"]["gradient_checkpointing"] == job["hyperparameters"]["gradient_checkpointing"]
        with factory() as s:
            stored = RunConfig.from_dict(s.get_one(Job, job["id"]).run_config or {})
        assert stored.train.gradient_checkpointing == job["hyperparameters"]["gradient_checkpointing"]
        return bool(stored.train.gradient_checkpointing)

    full = _peak(client, key, file_id, **SHAPE, gradient_checkpointing=False)
    checkpointed = _peak(client, key, file_id, **SHAPE, gradient_checkpointing=True)
    assert decided() is False  # no worker seen
    _add_worker(factory, "small:1", _between(checkpointed, full))
    assert decided() is True
    _add_worker(factory, "large:1", 2 * full)
    assert decided() is False


def test_the_worker_reports_its_memory_in_its_heartbeat(factory: sessionmaker[Session], settings: Settings) -> None:
    reporter = Reporter(factory, "host:42", "cpu")
    reporter.report()
    with factory() as s:
        row = s.get_one(Worker, "host:42")
        first_seen = row.last_seen_at
    total, _ = host_memory()
    assert row.kind == "cpu" and row.total_bytes == total and 0 < row.free_bytes <= total
    assert row.device.startswith("CPU")
    stop = start_touching(settings.data_dir / "workers" / "test.alive", interval_s=0.05, on_tick=reporter.report)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with factory() as s:
                if s.get_one(Worker, "host:42").last_seen_at > first_seen:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the liveness thread never refreshed the worker's row")
    finally:
        stop.set()


def test_host_memory_reads_meminfo_and_a_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:    8000000 kB\n")
    assert host_memory(meminfo, tmp_path / "absent") == (16_000_000 * 1024, 8_000_000 * 1024)
    (tmp_path / "limit").write_text("max\n")
    assert host_memory(meminfo, tmp_path / "limit") == (16_000_000 * 1024, 8_000_000 * 1024)
    (tmp_path / "limit").write_text(f"{4 * 2**30}\n")
    assert host_memory(meminfo, tmp_path / "limit") == (4 * 2**30, 4 * 2**30)


def test_the_stored_config_carries_checkpointing_to_the_worker(
        client: TestClient, key: str, file_id: str, factory: sessionmaker[Session], settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import drlora_core.run
    from worker.job import run_job

    enabled: list[bool] = []
    original = drlora_core.run.enable_activation_checkpointing

    def spy(model: Any) -> bool:
        enabled.append(original(model))
        return enabled[-1]

    monkeypatch.setattr(drlora_core.run, "enable_activation_checkpointing", spy)
    r = _create(client, key, file_id, max_steps=4, batch_size=2, max_seq_len=32, r_init=2, r_target=4, r_max=8,
                gradient_checkpointing=True)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    outcome = run_job(job_id, factory, settings)
    with factory() as s:
        assert outcome == "succeeded", s.get_one(Job, job_id).error
    assert enabled == [True]
    with factory() as s:
        assert s.get_one(Job, job_id).status == "succeeded"
        messages = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any("succeeded" in m for m in messages)


def test_the_worker_logs_the_estimate_on_its_own_device(tmp_path: Path) -> None:
    from drlora_core.autoconfig import RunFacts, known_model_facts, resolve
    from drlora_core.config import LoraConfig, TrainConfig

    requested = RunConfig(LoraConfig(r_init=2, r_target=4, r_max=8), TrainConfig(batch_size=4, max_seq_len=64))
    config = resolve(requested, RunFacts.of(known_model_facts(demo_model_dir()), examples=100))
    roomy = estimate_here(demo_model_dir(), config, DeviceMemory("big", "cpu", 64 * 2**30, 60 * 2**30))
    tight = estimate_here(demo_model_dir(), config, DeviceMemory("small", "cpu", 2**20, 2**20))
    assert roomy is not None and roomy.endswith(": fits") and "on big (64.0 GiB total" in roomy
    assert tight is not None and tight.endswith("may NOT fit")
    (tmp_path / "config.json").write_text("{}")
    assert estimate_here(tmp_path, config, DeviceMemory("big", "cpu", 2**40, 2**40)) is None
