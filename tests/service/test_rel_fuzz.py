"""RELIABILITY 24a: schema fuzzing of the OpenAPI document with schemathesis, on PostgreSQL and on SQLite.

The app runs in-process through schemathesis's ASGI transport, on a real database and broker, with a real API key.
Every operation of the document is fuzzed (coverage, fuzzing and stateful phases) with a fixed seed and a bounded
number of examples; every response must be no 5xx, a documented status, the documented content type and match the
documented schema. No operation is left out (the test asserts each one was called):

- `POST /v1/files` (multipart) is fuzzed like the rest: schemathesis generates the form and its binary part.
- the downloads (`/v1/files/{file_id}/content`, `.../adapter`) have no JSON schema; their statuses, content types
  and error bodies are checked. Their sha256 and path-traversal guarantees have their own tests (RELIABILITY 21, 22).
- `GET .../events?stream=true` answers server-sent events until its job is finished or paused: schemathesis reads a
  stream until the request timeout (kept short) and checks its status and content type.

Path ids and the ids and model in a job body are half the time replaced by the tenant's real ones, so that the code
behind the 404s and 400s is fuzzed too. The rate limit and the active-job quota are off here: with them on, most
cases would stop at 429 (which is documented on every operation and tested in test_rel_access.py).

The number of cases run on each backend is printed and written to `<pytest basetemp>/fuzz-<backend>.json`.
The second half pins, on both backends, the server errors the fuzzer found and their kin found while fixing them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from drlora_cli.bootstrap import migrate, new_key, register_model
from service.settings import Settings
from tests.support.schema_fuzz import fuzz_config, load_schema, run_fuzz
from tests.support.service import fresh_pg_database, make_settings

pytestmark = pytest.mark.timeout(240)

SEED = 24
MAX_EXAMPLES = 50  # per operation in the fuzzing phase; the coverage phase is bounded by the schema itself
STREAM_TIMEOUT_S = 2.0
DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n'
JOBS = "/v1/fine_tuning/jobs"


@dataclass
class Tenant:
    key: str
    file_id: str
    job_id: str
    spare_file_id: str
    profile_id: str  # for the DELETEs, so that the other operations keep their file


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            fake_model_dir: Path) -> Iterator[Settings]:
    """A database and a queue of their own (no other test's sweep or worker meets the fuzzer's jobs), no rate limit."""
    extra: dict[str, Any] = {"task_queue": f"drlora-fuzz-{secrets.token_hex(4)}", "rate_limit_requests": 0,
                             "max_active_jobs_per_tenant": 0}
    with contextlib.ExitStack() as stack:
        urls = ("", "")
        if request.param == "postgresql":
            urls = (stack.enter_context(fresh_pg_database("drlora_fuzz")), request.getfixturevalue("redis_url"))
        settings = make_settings(tmp_path_factory.mktemp(f"fuzz-{request.param}"), *urls, **extra)
        migrate(settings)
        register_model(settings, "test-model", fake_model_dir)
        yield settings


@pytest.fixture(scope="module")
def app(backend: Settings) -> FastAPI:
    return create_app(backend, sweep=False)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def tenant(client: TestClient, backend: Settings) -> Tenant:
    """A tenant with two files and a cancelled job (a finished job's event stream ends at once)."""
    key = new_key(backend, f"fuzz-{secrets.token_hex(4)}").key
    auth = {"Authorization": f"Bearer {key}"}
    file, spare = (client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", DATA)},
                               data={"purpose": "fine-tune"}).json()["id"] for _ in range(2))
    job = client.post(JOBS, headers=auth, json={"model": "test-model", "training_file": file}).json()["id"]
    assert client.post(f"{JOBS}/{job}/cancel", headers=auth).json()["status"] == "cancelled"
    profile = client.post("/v1/fine_tuning/profiles", headers=auth,
                          json={"model": "test-model", "training_file": file}).json()["id"]
    return Tenant(key=key, file_id=file, job_id=job, spare_file_id=spare, profile_id=profile)


@pytest.mark.slow  # about 2,000 requests per backend: minutes on 2 cores; CI runs it
def test_fuzzing_the_openapi_document_finds_no_error(app: FastAPI, tenant: Tenant, backend: Settings,
                                                     tmp_path_factory: pytest.TempPathFactory,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fuzz_config(tenant.key, seed=SEED, max_examples=MAX_EXAMPLES, request_timeout_s=STREAM_TIMEOUT_S)
    schema = load_schema(
        app, cfg, path_ids={"fine_tuning_job_id": tenant.job_id, "file_id": tenant.file_id,
                            "profile_id": tenant.profile_id},
        body_values={"model": "test-model", "training_file": tenant.file_id, "validation_file": tenant.file_id,
                     "purpose": "fine-tune", "file": DATA},
        delete_ids={"file_id": tenant.spare_file_id},
    )
    report = run_fuzz(schema)
    name = "sqlite" if backend.is_sqlite else "postgresql"
    (tmp_path_factory.getbasetemp() / f"fuzz-{name}.json").write_text(json.dumps(report.summary(), indent=1))
    with capsys.disabled():  # the figure shows in every run, captured or not
        print(f"\nschemathesis on {name}: {report.cases} cases, {report.requests} requests, "
              f"{len(report.failures)} failures")
    assert not report.failures, "\n\n".join(report.failures[:20])
    operations = {f"{verb.upper()} {path}" for path, item in app.openapi()["paths"].items() for verb in item}
    assert operations <= set(report.statuses), f"never called: {operations - set(report.statuses)}"


# Each a 500 before its fix: (method, url, json body or None). The first three the fuzzer found on PostgreSQL; the
# rest are their kin, found by probing the same classes (NUL, INTEGER range, Unicode digits) while fixing them.
FOUND: list[tuple[str, str, Any]] = [
    ("GET", f"{JOBS}?metadata[team]=a%00", None),  # PostgreSQL text cannot hold NUL
    ("GET", f"{JOBS}/{{job}}/metrics?after=2147483648", None),  # past the INTEGER column
    ("GET", f"{JOBS}/{{job}}/ranks?step=2147483648", None),
    ("POST", JOBS, {"model": "test-model\x00", "training_file": "{file}"}),
    ("POST", JOBS, {"model": "test-model", "training_file": "{file}", "metadata": {"a": "\x00"}}),
    ("GET", f"{JOBS}?metadata[k%00]=a", None),  # SQLite: a JSON path error
    ("GET", f"{JOBS}/{{job}}%00", None),
    ("GET", "/v1/models/a%00b", None),
    ("GET", "/v1/files?purpose=%00", None),
    ("GET", f"{JOBS}/{{job}}/checkpoints?after=%00", None),
    ("GET", f"{JOBS}/{{job}}/events?after=ftevent-2147483648", None),
    ("GET", f"{JOBS}/{{job}}/events?after=ftevent-%C2%B2", None),  # "²".isdigit() is true, int("²") raises
    ("GET", f"{JOBS}/{{job}}/adapter?checkpoint=%C2%B2", None),
    ("GET", f"{JOBS}/{{job}}/adapter?checkpoint=2147483648", None),
]
INF_ALPHA = '{"model": "test-model", "training_file": "%s", "method": {"type": "lora", "lora": {"hyperparameters": ' \
            '{"alpha": 1e999}}}}'


def fill(value: Any, tenant: Tenant) -> Any:
    if isinstance(value, str):
        return value.replace("{job}", tenant.job_id).replace("{file}", tenant.file_id)
    if isinstance(value, dict):
        return {k: fill(v, tenant) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "url", "body"), FOUND)
def test_what_the_fuzzer_found_answers_4xx(client: TestClient, tenant: Tenant, method: str, url: str,
                                           body: Any) -> None:
    r = client.request(method, fill(url, tenant), json=fill(body, tenant),
                       headers={"Authorization": f"Bearer {tenant.key}"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" or r.status_code == 404, r.text


def test_a_number_that_parses_to_infinity_is_refused_not_stored(client: TestClient, tenant: Tenant) -> None:
    """1e999 is valid JSON and parses to inf: PostgreSQL refused to store it (500); SQLite kept it as null."""
    r = client.post(JOBS, content=INF_ALPHA % tenant.file_id,
                    headers={"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "method.lora.hyperparameters.alpha", r.text
