"""OpenAI parity of requests and responses (issue 10, finding 7), on PostgreSQL without a worker: the request shapes
OpenAI's users send, and the response fields OpenAI's SDK expects. The worker's part (final checkpoint, result file)
is exercised in-process with the worker's own publish step; the SDK's strict types in test_svc_sdk_strict.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from drlora_core.autoconfig import learning_rate
from service.db import make_engine, make_sessionmaker, transaction
from service.settings import Settings
from service.tables import Job

pytestmark = pytest.mark.timeout(60)

DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n{"prompt": "2 + 2 =", "completion": " 4"}\n'
# test-model has an empty config.json: a model of unknown size, so "auto" gives the paper's learning rate
AUTO_LR = learning_rate(None)


@pytest.fixture(scope="module")
def client(pg_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, sweep=False)) as c:
        yield c


@pytest.fixture
def key(make_key) -> str:  # type: ignore[no-untyped-def]
    return str(make_key())


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def file_id(client: TestClient, key: str) -> str:
    r = client.post("/v1/files", headers=auth(key), files={"file": ("t.jsonl", DATA)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def create(client: TestClient, key: str, **body: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", headers=auth(key),
                       json={"model": "test-model", "training_file": file_id(client, key), **body})


def created(client: TestClient, key: str, **body: Any) -> dict[str, Any]:
    r = create(client, key, **body)
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- requests ---------------------------------------------------------------------------------------------------
def test_legacy_top_level_hyperparameters_train_as_lora(client: TestClient, key: str) -> None:
    job = created(client, key, hyperparameters={"n_epochs": 2, "batch_size": 1, "learning_rate_multiplier": 2})
    assert job["method"]["type"] == "lora"
    hp = job["method"]["lora"]["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"]) == (2, 1)
    assert hp["learning_rate"] == pytest.approx(2 * AUTO_LR) and hp["learning_rate_multiplier"] == 2
    assert job["hyperparameters"] == hp


def test_legacy_hyperparameters_and_method_together_are_refused(client: TestClient, key: str) -> None:
    r = create(client, key, hyperparameters={"n_epochs": 2}, method={"type": "dr_lora"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "hyperparameters"


def test_supervised_method_trains_as_lora(client: TestClient, key: str) -> None:
    job = created(client, key, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}})
    assert job["method"]["type"] == "lora" and job["method"]["lora"]["hyperparameters"]["n_epochs"] == 3
    bare = created(client, key, method={"type": "supervised"})
    assert bare["method"]["type"] == "lora"


@pytest.mark.parametrize("method", ["dr_lora", "lora", "static", "supervised", None])
def test_every_openai_hyperparameter_takes_auto(client: TestClient, key: str, method: str | None) -> None:
    hp = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    body = {"hyperparameters": hp} if method is None else {"method": {"type": method, method: {"hyperparameters": hp}}}
    job = created(client, key, **body)
    shown = job["hyperparameters"]
    assert isinstance(shown["n_epochs"], int) and isinstance(shown["batch_size"], int)
    assert shown["learning_rate_multiplier"] == 1 and shown["learning_rate"] == pytest.approx(AUTO_LR)


def test_learning_rate_multiplier_scales_the_auto_learning_rate(client: TestClient, key: str) -> None:
    def hp(**given: Any) -> dict[str, Any]:
        job = created(client, key, method={"type": "dr_lora", "dr_lora": {"hyperparameters": given}})
        return dict(job["hyperparameters"])

    scaled = hp(learning_rate_multiplier=0.5)
    assert scaled["learning_rate"] == pytest.approx(0.5 * AUTO_LR) and scaled["learning_rate_multiplier"] == 0.5
    given = hp(learning_rate=4 * AUTO_LR)  # the multiplier shown is what the given rate amounts to
    assert given["learning_rate_multiplier"] == 4
    r = create(client, key, method={"type": "dr_lora", "dr_lora": {"hyperparameters": {
        "learning_rate": 1e-4, "learning_rate_multiplier": 2}}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "method.dr_lora.hyperparameters.learning_rate_multiplier"
    r = create(client, key, hyperparameters={"learning_rate_multiplier": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.learning_rate_multiplier"


def test_integrations_are_stored_and_returned(client: TestClient, key: str) -> None:
    integrations = [{"type": "wandb", "wandb": {"project": "p", "name": "run", "entity": None, "tags": ["a"]}}]
    job = created(client, key, integrations=integrations)
    assert job["integrations"] == integrations
    again = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(key)).json()
    assert again["integrations"] == integrations
    listed = client.get("/v1/fine_tuning/jobs", headers=auth(key)).json()["data"][0]
    assert listed["integrations"] == integrations
    assert created(client, key)["integrations"] is None
    r = create(client, key, integrations=[{"type": "comet", "comet": {}}])
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("integrations")


@pytest.mark.parametrize(("body", "param"), [
    ({"validation_file": ""}, "validation_file"),
    ({"seed": True}, "seed"),
    ({"seed": False}, "seed"),
    ({"seed": "7"}, "seed"),
])
def test_empty_validation_file_and_boolean_seed_are_refused(client: TestClient, key: str, body: dict[str, Any],
                                                            param: str) -> None:
    r = create(client, key, **body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


# -- responses --------------------------------------------------------------------------------------------------
def test_the_job_names_its_organization(client: TestClient, make_key) -> None:  # type: ignore[no-untyped-def]
    name = f"org-{secrets.token_hex(4)}"
    key = make_key(tenant=name)
    job = created(client, key)
    assert job["organization_id"] == name
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth(key)).json()["organization_id"] == name


def test_events_are_listed_newest_first_and_after_pages_on(client: TestClient, key: str) -> None:
    job = created(client, key)
    path = f"/v1/fine_tuning/jobs/{job['id']}"
    for action in ("pause", "resume", "pause", "resume", "cancel"):
        assert client.post(f"{path}/{action}", headers=auth(key)).status_code == 200
    everything = client.get(f"{path}/events", headers=auth(key), params={"limit": 100}).json()
    ids = [int(e["id"].removeprefix("ftevent-")) for e in everything["data"]]
    # created, the pre-flight note (no worker seen), then the five requests: newest first, numbered per job
    assert ids == list(range(len(ids), 0, -1)) and len(ids) >= 6 and not everything["has_more"]
    assert everything["data"][0]["message"] == "Job cancelled" and everything["data"][-1]["message"].startswith("Created")
    pages, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 4} | ({"after": after} if after else {})
        page = client.get(f"{path}/events", headers=auth(key), params=params).json()
        pages += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert pages == [e["id"] for e in everything["data"]]


def test_an_unknown_checkpoint_cursor_is_404(client: TestClient, key: str) -> None:
    job = created(client, key)
    r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth(key), params={"after": "ftckpt-0"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "after"


def test_estimated_finish_is_cleared_when_the_job_ends(client: TestClient, key: str, pg_settings: Settings) -> None:
    from service import jobstate

    job = created(client, key)
    engine = make_engine(pg_settings.sqlalchemy_url)
    factory = make_sessionmaker(engine)
    try:
        with transaction(factory) as s:
            s.execute(update(Job).where(Job.id == job["id"]).values(status="running", attempt=1, estimated_finish=2e9))
        with transaction(factory) as s:
            jobstate.fail(s, job["id"], 1, code="training_error", message="boom")
    finally:
        engine.dispose()
    ended = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(key)).json()
    assert ended["status"] == "failed" and ended["estimated_finish"] is None
