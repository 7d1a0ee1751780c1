"""Routing profiles in-process: the API (FastAPI's TestClient) on the embedded stack (SQLite, the filesystem broker)
and the worker's task function run in this process on the demo model: create, claim once, result, errors, tenant
isolation and the sweep."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from drlora_cli.bootstrap import migrate, new_key, register_model
from service import profiles
from service.db import transaction
from service.settings import Settings
from service.tables import Profile
from tests.support.service import demo_paths, make_settings
from worker.profile import run_profile

pytestmark = pytest.mark.timeout(300)

PROFILES = "/v1/fine_tuning/profiles"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("profiles"))
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sweep=False)) as c:
        yield c


def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings, f'tenant-{secrets.token_hex(4)}').key}"}


def upload(client: TestClient, headers: dict[str, str], lines: int = 40) -> str:
    data = "".join(demo_paths()[1].read_text().splitlines(keepends=True)[:lines])
    r = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def create(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    r = client.post(PROFILES, headers=headers, json={"model": "drlora-demo-moe", **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_profile_runs_in_the_worker_and_answers_shares_lengths_and_static_ranks(
        client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    created = create(client, headers, training_file=upload(client, headers), max_examples=16, max_seq_len=14,
                     batch_size=8, r_init=2, r_target=4, r_max=8)
    assert created["object"] == "fine_tuning.profile" and created["id"].startswith("ftprof-")
    assert created["status"] == "queued" and created["frequency"] is None and created["finished_at"] is None
    assert created["hyperparameters"] == {"max_seq_len": 14, "batch_size": 8, "r_init": 2, "r_target": 4,
                                          "r_max": 8, "seed": 0}

    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    assert run_profile(created["id"], factory, settings) == "succeeded"
    assert run_profile(created["id"], factory, settings) == "skipped"  # a duplicate delivery claims nothing

    done = client.get(f"{PROFILES}/{created['id']}", headers=headers).json()
    assert done["status"] == "succeeded" and done["finished_at"] >= done["created_at"] and done["error"] is None
    assert done["examples"] == 16 and 0 < done["tokens"] <= 16 * 14
    assert len(done["frequency"]) == 4
    for row in done["frequency"]:
        assert len(row) == 16 and abs(sum(row) - 1) < 1e-9
    assert [sum(row) for row in done["static_ranks"]] == [16 * 4] * 4
    assert all(2 <= r <= 8 for row in done["static_ranks"] for r in row)
    lengths, cut = done["lengths"], done["truncation"]
    assert lengths["records"] == 40 and sum(b["count"] for b in lengths["histogram"]) == 40
    assert lengths["max"] > 14 and cut["max_seq_len"] == 14 and cut["truncated_examples"] > 0
    assert 0 < cut["cut_fraction"] < 1 and cut["cut_tokens"] > 0


def test_auto_ranks_resolve_as_a_jobs_would(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    created = create(client, headers, training_file=upload(client, headers))
    hp = created["hyperparameters"]
    assert (hp["r_init"], hp["r_target"], hp["r_max"]) == (2, 4, 8)  # the tiny demo model's ranks
    assert hp["batch_size"] == 1 and hp["max_seq_len"] == 512 and created["max_examples"] == 256


def test_bad_requests_name_the_parameter(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    file_id = upload(client, headers)
    r = client.post(PROFILES, headers=headers, json={"model": "drlora-demo-moe", "training_file": file_id,
                                                     "r_max": 12})
    assert r.status_code == 422 and r.json()["error"]["param"] == "r_max", r.text
    r = client.post(PROFILES, headers=headers, json={"model": "nope", "training_file": file_id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = client.post(PROFILES, headers=headers, json={"model": "drlora-demo-moe", "training_file": file_id,
                                                     "max_examples": 0})
    assert r.status_code == 422
    other = auth(settings)  # another tenant's file is an unknown file
    r = client.post(PROFILES, headers=other, json={"model": "drlora-demo-moe", "training_file": file_id})
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_not_found"


def test_another_tenants_profile_answers_404(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    created = create(client, headers, training_file=upload(client, headers))
    foreign = client.get(f"{PROFILES}/{created['id']}", headers=auth(settings))
    unknown = client.get(f"{PROFILES}/ftprof-0123456789abcdef01234567", headers=headers)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["code"] == "profile_not_found"


def test_a_failing_profile_records_its_error(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    created = create(client, headers, training_file=upload(client, headers))
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with transaction(factory) as s:  # the model's directory is gone by the time the worker runs
        s.execute(update(Profile).where(Profile.id == created["id"]).values(model="vanished"))
    assert run_profile(created["id"], factory, settings) == "failed"
    error = client.get(f"{PROFILES}/{created['id']}", headers=headers).json()["error"]
    assert error["code"] == "invalid_input" and "vanished" in error["message"]


def test_the_sweep_resends_a_lost_message_and_fails_a_lost_worker(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    file_id = upload(client, headers)
    queued, running = create(client, headers, training_file=file_id), create(client, headers, training_file=file_id)
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    celery = client.app.state.celery  # type: ignore[attr-defined]
    with transaction(factory) as s:
        s.execute(update(Profile).where(Profile.id == queued["id"]).values(dispatched_at=None))
        assert profiles.claim(s, running["id"], "gone-worker")
        s.execute(update(Profile).where(Profile.id == running["id"]).values(
            started_at=Profile.started_at - profiles.PROFILE_TIME_LIMIT_S - 1))
    sent = profiles.sweep(factory, celery, settings)
    assert queued["id"] in sent and running["id"] not in sent
    lost = client.get(f"{PROFILES}/{running['id']}", headers=headers).json()
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost"


def test_the_api_process_never_imports_torch_for_profiles() -> None:
    import subprocess
    import sys

    code = ("import sys; import api.routes.profiles, api.schemas.profiles, service.profiles; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0
