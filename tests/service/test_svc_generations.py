"""Generations in-process: the API (FastAPI's TestClient) on the embedded stack (SQLite, the filesystem broker) and
the worker's task functions run in this process on the demo model: a short job trains, then generations of its final
adapter and of a checkpoint are asked for, claimed once and answered; bad input is a 400 naming the field, another
tenant's job a 404, a job without an adapter a 409; the sweep fails lost ones and re-sends unsent ones."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from drlora_cli.bootstrap import migrate, new_key, register_model
from service import generations
from service.db import transaction
from service.settings import Settings
from service.tables import Artifact, Generation
from tests.support.service import demo_paths, dr_lora, make_settings
from worker.generate import run_generation
from worker.job import run_job

pytestmark = pytest.mark.timeout(300)

JOBS = "/v1/fine_tuning/jobs"
PROMPTS = ["What is 12 plus 7?", "What is 40 minus 8?"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("generations"))
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sweep=False)) as c:
        yield c


def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings, f'tenant-{secrets.token_hex(4)}').key}"}


def new_job(client: TestClient, headers: dict[str, str]) -> str:
    data = "".join(demo_paths()[1].read_text().splitlines(keepends=True)[:40])
    r = client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    r = client.post(JOBS, headers=headers, json={"model": "drlora-demo-moe", "training_file": r.json()["id"],
                                                 "method": dr_lora()})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def trained(client: TestClient, settings: Settings) -> tuple[dict[str, str], str]:
    """A tenant and its succeeded 6-step job (checkpoints at steps 2 and 4)."""
    headers = auth(settings)
    job_id = new_job(client, headers)
    assert run_job(job_id, client.app.state.sessionmaker, settings) == "succeeded"  # type: ignore[attr-defined]
    return headers, job_id


def ask(client: TestClient, headers: dict[str, str], job_id: str, **body: Any) -> Any:
    return client.post(f"{JOBS}/{job_id}/generations", headers=headers, json={"prompts": PROMPTS, **body})


def test_a_generation_is_claimed_once_and_answers_one_completion_per_prompt(
        client: TestClient, settings: Settings, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    r = ask(client, headers, job_id, max_new_tokens=5)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["object"] == "fine_tuning.generation" and created["id"].startswith("ftgen-")
    assert created["status"] == "queued" and created["completions"] is None and created["step"] == 6
    assert created["chat"] is False and created["checkpoint"] is None and created["prompts"] == PROMPTS

    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    assert run_generation(created["id"], factory, settings) == "succeeded"
    assert run_generation(created["id"], factory, settings) == "skipped"  # a duplicate delivery claims nothing

    done = client.get(f"{JOBS}/{job_id}/generations/{created['id']}", headers=headers).json()
    assert done["status"] == "succeeded" and done["error"] is None and done["finished_at"] >= done["created_at"]
    assert [c["prompt"] for c in done["completions"]] == PROMPTS
    assert [c["index"] for c in done["completions"]] == [0, 1]
    assert all(isinstance(c["text"], str) for c in done["completions"])

    again = ask(client, headers, job_id, max_new_tokens=5).json()  # greedy: the same answer every time
    assert run_generation(again["id"], factory, settings) == "succeeded"
    repeat = client.get(f"{JOBS}/{job_id}/generations/{again['id']}", headers=headers).json()
    assert repeat["completions"] == done["completions"]


def test_a_checkpoint_is_named_by_step_and_an_unknown_one_is_a_400(
        client: TestClient, settings: Settings, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    r = ask(client, headers, job_id, checkpoint="2", max_new_tokens=3, temperature=0.9, top_p=0.8, seed=7)
    assert r.status_code == 201, r.text
    assert r.json()["step"] == 2 and r.json()["checkpoint"] == "2" and r.json()["temperature"] == 0.9
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    assert run_generation(r.json()["id"], factory, settings) == "succeeded"
    r = ask(client, headers, job_id, checkpoint="5")
    assert r.status_code == 400 and r.json()["error"]["param"] == "checkpoint"
    assert r.json()["error"]["code"] == "checkpoint_not_found"


@pytest.mark.parametrize(("body", "param"), [
    ({"prompts": []}, "prompts"),
    ({"prompts": ["a"] * 9}, "prompts"),
    ({"prompts": ["ok", "x" * 4001]}, "prompts.1"),
    ({"prompts": ["   "]}, "prompts.0"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 257}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.01}, "top_p"),
    ({"seed": -1}, "seed"),
    ({"checkpoint": " "}, "checkpoint"),
    ({"checkpoint": "9" * 65}, "checkpoint"),
])
def test_bad_input_is_a_400_naming_the_field(client: TestClient, trained: tuple[dict[str, str], str],
                                              body: dict[str, Any], param: str) -> None:
    headers, job_id = trained
    r = ask(client, headers, job_id, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_an_unknown_field_or_a_wrong_type_is_refused_by_name(
        client: TestClient, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    r = ask(client, headers, job_id, stream=True)
    assert r.status_code == 422 and r.json()["error"]["param"] == "stream"
    r = client.post(f"{JOBS}/{job_id}/generations", headers=headers, json={"prompts": "What is 1 plus 1?"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompts"


def test_another_tenants_job_and_generation_are_404(
        client: TestClient, settings: Settings, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    created = ask(client, headers, job_id).json()
    other = auth(settings)
    r = ask(client, other, job_id)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = client.get(f"{JOBS}/{job_id}/generations/{created['id']}", headers=other)
    assert r.status_code == 404
    r = client.get(f"{JOBS}/{job_id}/generations/ftgen-nope", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "generation_not_found"


def test_a_job_without_an_adapter_yet_is_409(client: TestClient, settings: Settings) -> None:
    headers = auth(settings)
    job_id = new_job(client, headers)  # queued, never run
    r = ask(client, headers, job_id)
    assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_not_ready"


def test_an_adapter_gone_from_storage_fails_the_generation_with_what_happened(
        client: TestClient, settings: Settings, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    created = ask(client, headers, job_id, checkpoint="4").json()
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    with factory() as s:
        artifact = s.get_one(Artifact, s.get_one(Generation, created["id"]).artifact_id)
        path = settings.artifact_root / artifact.path
    kept = path.read_bytes()
    path.write_bytes(b"not a zip")
    try:
        assert run_generation(created["id"], factory, settings) == "failed"
    finally:
        path.write_bytes(kept)
    done = client.get(f"{JOBS}/{job_id}/generations/{created['id']}", headers=headers).json()
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_input"
    assert "unusable" in done["error"]["message"] and done["completions"] is None


def test_the_sweep_fails_a_lost_generation_and_resends_an_unsent_one(
        client: TestClient, settings: Settings, trained: tuple[dict[str, str], str]) -> None:
    headers, job_id = trained
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    lost, unsent = ask(client, headers, job_id).json(), ask(client, headers, job_id).json()
    with transaction(factory) as s:
        assert generations.claim(s, lost["id"], "gone-worker")
        s.execute(update(Generation).where(Generation.id == lost["id"])
                  .values(started_at=Generation.created_at - generations.GENERATION_TIME_LIMIT_S - 1))
        s.execute(update(Generation).where(Generation.id == unsent["id"]).values(dispatched_at=None))
    sent = generations.sweep(factory, client.app.state.celery, settings)  # type: ignore[attr-defined]
    assert unsent["id"] in sent and lost["id"] not in sent
    done = client.get(f"{JOBS}/{job_id}/generations/{lost['id']}", headers=headers).json()
    assert done["status"] == "failed" and done["error"]["code"] == "worker_lost"
    with transaction(factory) as s:  # a late finish by the lost worker changes nothing
        assert not generations.finish(s, lost["id"], "gone-worker", ["late"])
