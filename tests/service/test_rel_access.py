"""Bad input and access (RELIABILITY.md items 15 to 18 and 23), on PostgreSQL + Redis and, where the item says so,
on SQLite with the in-process limiter.

Concurrency is real: the app runs in-process behind httpx's ASGI transport and `asyncio.gather` sends the requests
at once, so the sync routes run side by side in the threadpool, each with its own database connection. The log and
multi-process tests start real API processes (uvicorn) and stop them by pid.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import MetaData, String, Text, func, select, update

from api.main import create_app
from api.ratelimit import REDIS_PREFIX, LocalLimiter, RedisLimiter
from api.schemas.jobs import JobCreate, JobPublic
from drlora_cli.bootstrap import migrate, new_key, register_model
from service import exports, generations
from service.db import make_engine, make_sessionmaker, transaction
from service.ids import new_id
from service.keys import hash_key, revoke_key
from service.quota import ACTIVE
from service.settings import Settings
from service.tables import ApiKey, Artifact, Checkpoint, Export, Generation, Job, JobEvent, Tenant
from tests.support.exports import build_export, store_file
from tests.support.service import free_port, make_settings, start_api

pytestmark = pytest.mark.timeout(120)

DATA = b'{"prompt": "1 + 1 =", "completion": " 2"}\n{"prompt": "2 + 2 =", "completion": " 4"}\n'
JOBS = "/v1/fine_tuning/jobs"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def sqlite_settings(tmp_path_factory: pytest.TempPathFactory, fake_model_dir: Path) -> Settings:
    settings = make_settings(tmp_path_factory.mktemp("sqlite-access"))
    migrate(settings)
    register_model(settings, "test-model", fake_model_dir)
    return settings


@pytest.fixture(params=["postgresql", "sqlite"])
def db_settings(request: pytest.FixtureRequest) -> Settings:
    """PostgreSQL with the Redis limiter, then SQLite with the in-process one."""
    return request.getfixturevalue("pg_settings" if request.param == "postgresql" else "sqlite_settings")


def key_for(settings: Settings) -> str:
    return new_key(settings, f"tenant-{secrets.token_hex(4)}").key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def serving(settings: Settings, **overrides: Any) -> Iterator[FastAPI]:
    """The app in-process with `overrides` on top of `settings`, its connections closed afterwards."""
    app = create_app(settings.model_copy(update=overrides), sweep=False)
    try:
        yield app
    finally:
        app.state.limiter.close()
        app.state.engine.dispose()


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return gather(app, [(method, url, kwargs)])[0]


def gather(app: FastAPI, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Sends every request at once and answers their responses in the same order."""
    async def send_all() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.request(m, u, **kw) for m, u, kw in requests))

    return asyncio.run(send_all())


def upload(app: FastAPI, key: str, name: str = "train.jsonl") -> str:
    r = call(app, "POST", "/v1/files", headers=auth(key), files={"file": (name, DATA)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def job_body(file_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "training_file": file_id, **extra}


def count_jobs(settings: Settings, **where: Any) -> int:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as s:
            query = select(func.count()).select_from(Job)
            for column, value in where.items():
                query = query.where(getattr(Job, column).in_(value) if isinstance(value, tuple)
                                    else getattr(Job, column) == value)
            return s.scalar(query) or 0
    finally:
        engine.dispose()


def tenant_of(settings: Settings, key: str) -> str:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as s:
            return str(s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key))))
    finally:
        engine.dispose()


def error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# ---------------------------------------------------------------- 15. Idempotency-Key under concurrency

@pytest.mark.parametrize("quota", [4, 0], ids=["quota-lock", "unique-constraint"])
def test_ten_concurrent_creates_with_one_idempotency_key_make_one_job(db_settings: Settings, quota: int) -> None:
    # With a quota the tenant lock serializes the ten; without one the unique constraint must decide alone.
    with serving(db_settings, max_active_jobs_per_tenant=quota) as app:
        key = key_for(db_settings)
        body = job_body(upload(app, key), suffix="same")
        headers = {**auth(key), "Idempotency-Key": f"idem-{secrets.token_hex(4)}"}
        answers = gather(app, [("POST", JOBS, {"headers": headers, "json": body})] * 10)
        assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers if r.status_code != 200]
        ids = {r.json()["id"] for r in answers}
        assert len(ids) == 1
        listed = call(app, "GET", JOBS, headers=auth(key)).json()["data"]
        assert [j["id"] for j in listed] == list(ids)
    tenant = tenant_of(db_settings, key)
    assert count_jobs(db_settings, tenant_id=tenant) == 1


def test_concurrent_creates_with_one_key_and_two_bodies_make_one_job(db_settings: Settings) -> None:
    with serving(db_settings) as app:
        key = key_for(db_settings)
        file_id = upload(app, key)
        headers = {**auth(key), "Idempotency-Key": "shared"}
        requests = [("POST", JOBS, {"headers": headers, "json": job_body(file_id, seed=i % 2)}) for i in range(10)]
        answers = gather(app, requests)
        created = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code != 200]
        assert len({r.json()["id"] for r in created}) == 1 and len({r.json()["seed"] for r in created}) == 1
        assert len(created) == 5 and all(r.status_code == 422 for r in refused), [r.text for r in refused]
        assert {error(r)["code"] for r in refused} == {"idempotency_key_reused"}
        assert {error(r)["param"] for r in refused} == {"Idempotency-Key"}
    assert count_jobs(db_settings, tenant_id=tenant_of(db_settings, key)) == 1


# ---------------------------------------------------------------- 16 and 17: two tenants with rows everywhere

class World:
    """An owner with a file, a job (made to look succeeded), a checkpoint and events; an intruder with its own."""

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self.settings, self.app = settings, app
        self.owner, self.intruder = key_for(settings), key_for(settings)
        self.idempotency_key = f"owner-idem-{secrets.token_hex(6)}"
        self.file = upload(app, self.owner, name=f"owner-{secrets.token_hex(4)}.jsonl")
        self.body = job_body(self.file, suffix="owned", metadata={"secret": "owner-metadata-value"})
        r = call(app, "POST", JOBS, headers={**auth(self.owner), "Idempotency-Key": self.idempotency_key},
                 json=self.body)
        assert r.status_code == 200, r.text
        self.job = r.json()["id"]
        self.model = f"ft:test-model:owned:{self.job}"
        self.checkpoint = f"ckpt-{secrets.token_hex(6)}"
        engine = make_engine(settings.sqlalchemy_url)
        with transaction(make_sessionmaker(engine)) as s:
            s.execute(update(Job).where(Job.id == self.job).values(
                status="succeeded", fine_tuned_model=self.model, finished_at=time.time(), step=2, total_steps=2))
            s.add(Checkpoint(id=self.checkpoint, job_id=self.job, step=2, attempt=1, path=f"{self.job}/ckpt-2",
                             metrics={"step": 2}, created_at=time.time()))
            adapter = f"{self.job}/attempt-1/adapter.zip"
            s.add(Artifact(id=new_id("artifact"), job_id=self.job, kind="adapter", step=2, checkpoint_id=None,
                           path=adapter, sha256=store_file(settings, adapter, b"PK owner adapter"), bytes=16,
                           created_at=time.time()))
        with transaction(make_sessionmaker(engine)) as s:
            self.export = exports.request(s, s.get_one(Job, self.job), exports.parse_options(dtype="bf16"), None)[0].id
        build_export(make_sessionmaker(engine), settings, self.export, b"PK owner export")
        with transaction(make_sessionmaker(engine)) as s:
            owner_job = s.get_one(Job, self.job)
            row = generations.new_generation(s, s.get_one(Tenant, owner_job.tenant_id), owner_job,
                                             generations.GenerationRequest(["owner prompt"]))
            s.add(row)
            self.generation = row.id
        with make_sessionmaker(engine)() as s:
            self.event = int(s.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == self.job)) or 0)
            self.tenant = str(s.scalar(select(Job.tenant_id).where(Job.id == self.job)))
            self.request_hash = str(s.scalar(select(Job.request_hash).where(Job.id == self.job)))
        r = call(app, "POST", "/v1/fine_tuning/profiles", headers=auth(self.owner),
                 json={"model": "test-model", "training_file": self.file})
        assert r.status_code == 200, r.text
        self.profile = r.json()["id"]
        self.intruder_file = upload(app, self.intruder)
        r = call(app, "POST", JOBS, headers=auth(self.intruder), json=job_body(self.intruder_file))
        assert r.status_code == 200, r.text
        self.intruder_job = r.json()["id"]
        with transaction(make_sessionmaker(engine)) as s:  # an export being built (its job's adapter is not needed)
            self.intruder_export = new_id("export")
            s.add(Export(id=self.intruder_export, job_id=self.intruder_job, source="final", checkpoint_step=None,
                         options={"layout": "fused", "dtype": "bf16", "base_model_name_or_path": None,
                                  "max_rank": None}, options_key="fused;bf16", status="queued", progress=0.0,
                         attempt=0, created_at=time.time()))
            self.intruder_generation = new_id("ftgen")  # a queued generation (no adapter behind it is needed)
            s.add(Generation(id=self.intruder_generation, tenant_id=s.get_one(Job, self.intruder_job).tenant_id,
                             job_id=self.intruder_job, checkpoint=None, artifact_id="none", step=0,
                             prompts=["intruder prompt"], max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0,
                             chat=False, status="queued", created_at=time.time()))
        engine.dispose()
        self.hook_url = f"https://93.184.216.34/owner-hook-{secrets.token_hex(4)}"  # a public address: no DNS
        self.webhook = self.register_webhook(self.owner, self.hook_url)
        self.intruder_webhook = self.register_webhook(self.intruder, "https://93.184.216.34/intruder")
        r = call(app, "POST", "/v1/fine_tuning/profiles", headers=auth(self.intruder),
                 json={"model": "test-model", "training_file": self.intruder_file})
        assert r.status_code == 200, r.text
        self.intruder_profile = r.json()["id"]
        self.doc: dict[str, Any] = call(app, "GET", "/openapi.json").json()

    def register_webhook(self, key: str, url: str) -> str:
        r = call(self.app, "POST", "/v1/webhooks", headers=auth(key),
                 json={"url": url, "events": ["fine_tuning.job.succeeded"]})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def owner_markers(self) -> list[str]:
        """Strings only the owner's rows hold: none may reach the intruder."""
        return [self.file, self.job, self.model, self.checkpoint, "owner-metadata-value", self.tenant, self.webhook,
                self.hook_url, self.profile, self.export, self.generation]

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(verb, path template, operation) for every route of the OpenAPI document."""
        return [(verb, path, op) for path, item in self.doc["paths"].items() for verb, op in item.items()]


@pytest.fixture(scope="module")
def world(pg_settings: Settings) -> Iterator[World]:
    with serving(pg_settings) as app:
        yield World(pg_settings, app)


# The id each path parameter names; a route with a parameter not listed here fails the test until it is added.
UNKNOWN = {"file_id": "file-0123456789abcdef01234567", "fine_tuning_job_id": "ftjob-0123456789abcdef01234567",
           "model": "ft:test-model:owned:ftjob-0123456789abcdef01234567", "webhook_id": "wh-0123456789abcdef01234567",
           "profile_id": "ftprof-0123456789abcdef01234567", "export_id": "export-0123456789abcdef01234567",
           "generation_id": "ftgen-0123456789abcdef01234567"}


def path_ids(world: World) -> dict[str, str]:
    return {"file_id": world.file, "fine_tuning_job_id": world.job, "model": world.model, "webhook_id": world.webhook,
            "profile_id": world.profile, "export_id": world.export,
            "generation_id": world.generation}


def fill(template: str, ids: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)(?::\w+)?}", template)
    missing = [n for n in names if n not in ids]
    assert not missing, f"{template}: add an owner id and an unknown id for {missing} to this test"
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: ids[m.group(1)], template)


def same_answer(foreign: httpx.Response, unknown: httpx.Response, foreign_ids: list[str],
                unknown_ids: list[str]) -> None:
    assert foreign.status_code == unknown.status_code == 404, (foreign.text, unknown.text)
    foreign_text, unknown_text = foreign.text, unknown.text
    for foreign_id, unknown_id in zip(foreign_ids, unknown_ids, strict=True):
        foreign_text, unknown_text = foreign_text.replace(foreign_id, "ID"), unknown_text.replace(unknown_id, "ID")
    assert foreign_text == unknown_text
    assert error(foreign)["type"] == "not_found_error"


def test_another_tenants_id_answers_404_like_an_unknown_id_on_every_route(world: World) -> None:
    routes = [(verb, path) for verb, path, _ in world.operations() if "{" in path]
    assert len(routes) >= 14, routes  # files x3, model, job x10 (get, cancel, pause, resume, events ... adapter)
    owned = path_ids(world)
    for verb, template in routes:
        names = re.findall(r"{(\w+)", template)
        foreign_url, unknown_url = fill(template, owned), fill(template, UNKNOWN)
        foreign = call(world.app, verb.upper(), foreign_url, headers=auth(world.intruder))
        unknown = call(world.app, verb.upper(), unknown_url, headers=auth(world.intruder))
        assert names[0] in ("file_id", "fine_tuning_job_id", "model", "webhook_id", "profile_id"), template
        same_answer(foreign, unknown, [owned[n] for n in names], [UNKNOWN[n] for n in names])
    # the owner's rows are untouched and still theirs: each GET answers the owner something else than 404-unknown
    for verb, template in routes:
        if verb == "get":
            mine = call(world.app, "GET", fill(template, owned), headers=auth(world.owner))
            assert mine.status_code == 200 or error(mine)["code"] == "adapter_not_found", (template, mine.text)
    job = call(world.app, "GET", f"{JOBS}/{world.job}", headers=auth(world.owner)).json()
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == world.model
    assert call(world.app, "GET", f"/v1/files/{world.file}/content", headers=auth(world.owner)).content == DATA


# Query parameters that take an id: (path, parameter) -> which of the owner's ids to try.
QUERY_IDS = {("/v1/files", "after"): "file", (JOBS, "after"): "job",
             (f"{JOBS}/{{fine_tuning_job_id}}/checkpoints", "after"): "checkpoint",
             (f"{JOBS}/{{fine_tuning_job_id}}/adapter", "checkpoint"): "checkpoint",
             (f"{JOBS}/{{fine_tuning_job_id}}/events", "after"): "event",
             (f"{JOBS}/{{fine_tuning_job_id}}/metrics", "after"): "step"}
CURSORS = ("event", "step")  # numeric cursors over the caller's own job: compared by what they reveal
ID_PARAMS = ("after", "before", "checkpoint", "file", "job", "model")
NOT_IDS = {(f"{JOBS}/{{fine_tuning_job_id}}/adapter", "base_model_name_or_path")}  # a name written into a file


def test_another_tenants_id_in_a_query_parameter_is_an_unknown_id(world: World) -> None:
    found = {(path, p["name"]) for verb, path, op in world.operations() for p in op.get("parameters", [])
             if p["in"] == "query" and any(word in p["name"] for word in ID_PARAMS)} - NOT_IDS
    assert found == set(QUERY_IDS), f"add the new id parameters to QUERY_IDS: {found ^ set(QUERY_IDS)}"
    owned = {"file": world.file, "job": world.job, "checkpoint": world.checkpoint, "event": f"ftevent-{world.event}",
             "step": "2"}
    unknown = {"file": UNKNOWN["file_id"], "job": UNKNOWN["fine_tuning_job_id"], "checkpoint": "ckpt-0000",
               "event": "ftevent-0", "step": "0"}
    for (template, param), kind in QUERY_IDS.items():
        url = fill(template, {"fine_tuning_job_id": world.intruder_job})
        foreign = call(world.app, "GET", url, params={param: owned[kind]}, headers=auth(world.intruder))
        other = call(world.app, "GET", url, params={param: unknown[kind]}, headers=auth(world.intruder))
        if kind in CURSORS:  # a position in the intruder's own job: it can reveal no foreign row
            assert foreign.status_code == other.status_code == 200
        else:
            assert foreign.status_code == other.status_code, (url, foreign.text, other.text)
            assert foreign.text.replace(owned[kind], "ID") == other.text.replace(unknown[kind], "ID"), url
        for marker in set(world.owner_markers()) - {owned[kind]}:  # the id it sent may be quoted back
            assert marker not in foreign.text, (url, marker)
        if foreign.status_code == 404:
            assert error(foreign)["param"] == param
    r = call(world.app, "POST", JOBS, headers=auth(world.intruder), json=job_body(world.file))
    u = call(world.app, "POST", JOBS, headers=auth(world.intruder), json=job_body(UNKNOWN["file_id"]))
    assert r.status_code == u.status_code == 400
    assert r.text.replace(world.file, "ID") == u.text.replace(UNKNOWN["file_id"], "ID")


def test_lists_and_the_intruders_own_resources_never_show_foreign_rows(world: World) -> None:
    gets = [path for verb, path, _ in world.operations() if verb == "get" and path.startswith("/v1/")]
    checked = 0
    for template in gets:
        url = fill(template, {"fine_tuning_job_id": world.intruder_job, "file_id": world.intruder_file,
                              "model": "test-model", "webhook_id": world.intruder_webhook,
                              "profile_id": world.intruder_profile, "export_id": world.intruder_export,
                              "generation_id": world.intruder_generation})
        r = call(world.app, "GET", url, headers=auth(world.intruder))
        assert r.status_code in (200, 409), (url, r.text)  # 409: the intruder's own adapter is not ready
        for marker in world.owner_markers():
            assert marker not in r.text, (url, marker)
        checked += 1
    assert checked >= 10
    files = call(world.app, "GET", "/v1/files", headers=auth(world.intruder)).json()["data"]
    assert [f["id"] for f in files] == [world.intruder_file]
    jobs = call(world.app, "GET", JOBS, headers=auth(world.intruder)).json()["data"]
    assert [j["id"] for j in jobs] == [world.intruder_job]
    models = call(world.app, "GET", "/v1/models", headers=auth(world.intruder)).json()["data"]
    assert world.model not in {m["id"] for m in models}
    mine = call(world.app, "GET", "/v1/models", headers=auth(world.owner)).json()["data"]
    assert world.model in {m["id"] for m in mine}


# ---------------------------------------------------------------- 17. fields a client must not set

def _internal_fields() -> list[str]:
    """Everything the server decides: each job column and each public job field a create body does not have."""
    columns = {c.name for c in Job.__table__.columns} | {a.key for a in Job.__mapper__.column_attrs}
    decided = (columns | set(JobPublic.model_fields)) - set(JobCreate.model_fields)
    return sorted(decided | {"tenant", "tenant_id", "paths", "path", "key_hash", "api_key", "owner"})


@pytest.mark.parametrize("field", _internal_fields())
def test_create_refuses_a_field_the_server_decides(world: World, field: str) -> None:
    r = call(world.app, "POST", JOBS, headers=auth(world.intruder),
             json=job_body(world.intruder_file, **{field: "x"}))
    assert r.status_code == 422, r.text
    assert error(r)["param"] == field and field in error(r)["message"]


def test_upload_refuses_a_form_field_the_server_decides(world: World) -> None:
    for field in ("tenant_id", "path", "status", "bytes"):
        r = call(world.app, "POST", "/v1/files", headers=auth(world.intruder), files={"file": ("t.jsonl", DATA)},
                 data={"purpose": "fine-tune", field: "x"})
        assert r.status_code == 422 and error(r)["param"] == field, r.text
    listed = call(world.app, "GET", "/v1/files", headers=auth(world.intruder)).json()["data"]
    assert [f["id"] for f in listed] == [world.intruder_file]


INTERNAL = {"tenant", "tenant_id", "attempt", "max_attempts", "lost_attempts", "worker_id", "heartbeat_at",
            "lease_expires_at", "requested_action", "dispatched_at", "idempotency_key", "request_hash", "key_hash",
            "path", "paths", "revoked_at", "api_key", "checkpoint_id", "started_at"}


def _schema_properties(doc: dict[str, Any], schema: dict[str, Any], seen: set[str]) -> set[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return set()
        seen.add(name)
        return _schema_properties(doc, doc["components"]["schemas"][name], seen)
    names = set(schema.get("properties", {}))
    children = list(schema.get("properties", {}).values()) + ([schema["items"]] if "items" in schema else [])
    children += [s for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key, [])]
    if isinstance(schema.get("additionalProperties"), dict):
        children.append(schema["additionalProperties"])
    for child in children:
        names |= _schema_properties(doc, child, seen)
    return names


def _json_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _json_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _json_keys(v)}
    return set()


def test_no_response_model_declares_an_internal_field(world: World) -> None:
    checked = 0
    for verb, path, op in world.operations():
        for status, response in op["responses"].items():
            for media in response.get("content", {}).values():
                names = _schema_properties(world.doc, media.get("schema", {}), set())
                assert not names & INTERNAL, (verb, path, status, names & INTERNAL)
                checked += 1
    assert checked >= 40


def test_no_response_carries_an_internal_field_or_value(world: World) -> None:
    secrets_ = [world.tenant, hash_key(world.owner), world.idempotency_key, world.request_hash,
                str(world.settings.data_dir), f"{world.job}/ckpt-2"]
    responses = [call(world.app, "GET", fill(path, path_ids(world)), headers=auth(world.owner))
                 for verb, path, _ in world.operations() if verb == "get" and path.startswith("/v1/")]
    responses.append(call(world.app, "GET", f"{JOBS}/{world.job}/checkpoints", headers=auth(world.owner)))
    replay = call(world.app, "POST", JOBS, headers={**auth(world.owner), "Idempotency-Key": world.idempotency_key},
                  json=world.body)
    assert replay.status_code == 200 and replay.json()["id"] == world.job
    responses.append(replay)
    responses.append(call(world.app, "POST", f"{JOBS}/{world.job}/cancel", headers=auth(world.owner)))
    for r in responses:
        if r.headers.get("content-type", "").split(";")[0] == "application/json":
            assert not _json_keys(r.json()) & INTERNAL, (r.url, _json_keys(r.json()) & INTERNAL)
        for value in secrets_:
            assert value not in r.text, (r.url, value)
    checkpoints = responses[-3].json()["data"]
    assert [c["id"] for c in checkpoints] == [world.checkpoint]


# ---------------------------------------------------------------- 18. keys: hashed, revocable, never logged

def _text_cells(settings: Settings) -> Iterator[tuple[str, str, str]]:
    """(table, column, value) for every text cell of every table in the database."""
    engine = make_engine(settings.sqlalchemy_url)
    meta = MetaData()
    meta.reflect(engine)
    try:
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for column in table.columns:
                    if isinstance(column.type, String | Text):
                        for (value,) in conn.execute(select(column).where(column.is_not(None))):
                            yield table.name, column.name, str(value)
    finally:
        engine.dispose()


def test_the_database_and_redis_hold_no_raw_api_key(world: World, redis_url: str) -> None:
    keys = (world.owner, world.intruder)
    leaks = [(t, c) for t, c, value in _text_cells(world.settings) for key in keys if key in value]
    assert not leaks
    stored = {v for t, c, v in _text_cells(world.settings) if (t, c) == ("api_keys", "key_hash")}
    assert {hash_key(k) for k in keys} <= stored
    client = redis.Redis.from_url(redis_url)
    try:
        names = [n.decode() for n in client.scan_iter(count=1000)]
        assert not [n for n in names for key in keys if key in n]
    finally:
        client.close()


# ---------------------------------------------------------------- 23. rate limits and the active-job quota

def test_rate_limit_answers_429_with_retry_after_and_recovers(db_settings: Settings) -> None:
    with serving(db_settings, rate_limit_requests=3, rate_limit_window_s=6) as app:
        limited, other = key_for(db_settings), key_for(db_settings)
        answers = [call(app, "GET", "/v1/models", headers=auth(limited)) for _ in range(3)]
        while answers[-1].status_code == 200 and len(answers) < 8:  # the 4th, unless the machine took > 2 s
            answers.append(call(app, "GET", "/v1/models", headers=auth(limited)))
        assert [r.status_code for r in answers[:3]] == [200] * 3 and answers[-1].status_code == 429, answers
        refused = answers[-1]
        wait = refused.headers["Retry-After"]
        assert wait.isdigit() and 1 <= int(wait) <= 6
        assert error(refused)["type"] == "rate_limit_error" and error(refused)["code"] == "rate_limit_exceeded"
        assert f"retry after {wait} s" in error(refused)["message"]
        assert call(app, "GET", "/v1/models", headers=auth(other)).status_code == 200
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert [call(app, "GET", path).status_code for _ in range(5)] == [200] * 5
        time.sleep(int(wait))
        assert call(app, "GET", "/v1/models", headers=auth(limited)).status_code == 200


def test_the_rate_limiter_falls_back_to_this_process_when_redis_is_unreachable() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", requests=2, window_s=60)
    try:
        started = time.monotonic()
        waits = [limiter.hit("k") for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # still limited, by this process
        assert time.monotonic() - started < 2  # and no request waited on Redis for long
    finally:
        limiter.close()
    local = LocalLimiter(requests=2, window_s=60)
    assert [local.hit("a") > 0 for _ in range(3)] + [local.hit("b") > 0] == [False, False, True, False]


def test_the_active_job_quota_holds_under_20_parallel_submits(db_settings: Settings) -> None:
    with serving(db_settings, max_active_jobs_per_tenant=3) as app:
        key, other = key_for(db_settings), key_for(db_settings)
        body = job_body(upload(app, key))
        answers = gather(app, [("POST", JOBS, {"headers": auth(key), "json": body})] * 20)
        created = [r.json()["id"] for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code != 200]
        assert len(created) == 3 and len(refused) == 17, [r.text for r in refused if r.status_code != 429]
        assert all(r.status_code == 429 and error(r)["code"] == "concurrency_quota_exceeded" for r in refused)
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert "wait for a job to finish" in error(refused[0])["message"]
        tenant = tenant_of(db_settings, key)
        assert count_jobs(db_settings, tenant_id=tenant, status=ACTIVE) == 3
        assert count_jobs(db_settings, tenant_id=tenant) == 3  # the refused ones left no row

        # another tenant is unaffected
        r = call(app, "POST", JOBS, headers=auth(other), json=job_body(upload(app, other)))
        assert r.status_code == 200, r.text
        # a paused job does not count; resuming it does
        assert call(app, "POST", f"{JOBS}/{created[0]}/pause", headers=auth(key)).json()["status"] == "paused"
        fourth = call(app, "POST", JOBS, headers=auth(key), json=body)
        assert fourth.status_code == 200, fourth.text
        r = call(app, "POST", f"{JOBS}/{created[0]}/resume", headers=auth(key))
        assert r.status_code == 429 and error(r)["code"] == "concurrency_quota_exceeded"
        assert call(app, "GET", f"{JOBS}/{created[0]}", headers=auth(key)).json()["status"] == "paused"
        assert call(app, "POST", f"{JOBS}/{created[1]}/cancel", headers=auth(key)).status_code == 200
        assert call(app, "POST", f"{JOBS}/{created[0]}/resume", headers=auth(key)).json()["status"] == "queued"
        assert count_jobs(db_settings, tenant_id=tenant, status=ACTIVE) == 3


def test_an_idempotent_replay_is_answered_when_the_quota_is_full(db_settings: Settings) -> None:
    with serving(db_settings, max_active_jobs_per_tenant=1) as app:
        key = key_for(db_settings)
        body = job_body(upload(app, key))
        headers = {**auth(key), "Idempotency-Key": "only-one"}
        first = call(app, "POST", JOBS, headers=headers, json=body)
        again = call(app, "POST", JOBS, headers=headers, json=body)
        assert first.status_code == again.status_code == 200 and first.json()["id"] == again.json()["id"]
        assert call(app, "POST", JOBS, headers=auth(key), json=body).status_code == 429


def test_429_is_documented_with_retry_after_on_every_authenticated_route(world: World) -> None:
    for verb, path, op in world.operations():
        if op.get("security"):
            response = op["responses"].get("429")
            assert response and "Retry-After" in response.get("headers", {}), (verb, path)


# ---------------------------------------------------------------- 18 and 23 with real API processes

@pytest.fixture(scope="module")
def two_apis(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
             fake_model_dir: Path) -> Iterator[tuple[Settings, list[str], list[Path]]]:
    """Two uvicorn processes on one PostgreSQL and Redis, logging at debug, with a rate limit of 5 per 30 s."""
    folder = tmp_path_factory.mktemp("two-apis")
    settings = make_settings(folder / "data", pg_url, redis_url, log_level="debug", rate_limit_requests=5,
                             rate_limit_window_s=30)
    migrate(settings)
    register_model(settings, "test-model", fake_model_dir)
    processes, urls, logs = [], [], []
    try:
        for i in range(2):
            port = free_port()
            logs.append(folder / f"api-{i}.log")
            processes.append(start_api(settings, port, logs[-1]))
            urls.append(f"http://127.0.0.1:{port}")
        yield settings, urls, logs
    finally:
        for process in processes:
            process.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_keys_never_appear_in_the_logs_and_a_revoked_key_is_refused_at_once(
        two_apis: tuple[Settings, list[str], list[Path]]) -> None:
    settings, urls, logs = two_apis
    issued = new_key(settings, f"logged-{secrets.token_hex(4)}")
    key, forged = issued.key, "drl-" + secrets.token_urlsafe(32)
    with httpx.Client(base_url=urls[0], timeout=30) as http:
        headers = {**auth(key), "Idempotency-Key": "log-test"}
        r = http.post("/v1/files", headers=auth(key), files={"file": ("t.jsonl", DATA)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        assert http.post(JOBS, headers=headers, json=job_body(r.json()["id"])).status_code == 200
        assert http.post(JOBS, headers=auth(key), json={"model": key}).status_code == 422
        assert http.get(f"{JOBS}/ftjob-nope", headers=auth(key)).status_code == 404
        for bad in (auth(forged), {"Authorization": key}, {"Authorization": f"Basic {key}"}, {"X-Api-Key": key}):
            assert http.get("/v1/models", headers=bad).status_code == 401
        assert http.get(f"/v1/files/{key}", headers=auth(forged)).status_code == 401  # pasted into the URL
        assert http.get("/v1/models", params={"api_key": key}).status_code == 401
        assert http.get("/v1/models", headers=auth(key)).status_code == 200
        assert http.get("/v1/models", headers=auth(key)).status_code == 429  # the 6th: rate limited, and logged
        engine = make_engine(settings.sqlalchemy_url)
        with transaction(make_sessionmaker(engine)) as s:
            assert revoke_key(s, issued.key_id)
        engine.dispose()
        r = http.get("/v1/models", headers=auth(key))
        assert r.status_code == 401 and error(r)["code"] == "invalid_api_key"
        bucket = REDIS_PREFIX + hash_key(key)  # the limiter's bucket is named by the hash, never the key
        client = redis.Redis.from_url(settings.broker_url)
        names = [n.decode() for n in client.scan_iter(match="drlora:*", count=1000)]
        client.close()
        assert bucket in names and not [n for n in names if key in n]
    time.sleep(0.5)  # let the access log flush
    text = logs[0].read_text(errors="replace")
    assert "GET /v1/models" in text and '"level": "DEBUG"' in text  # JSON lines, really at debug level
    for secret in (key, forged, key[len("drl-"):], forged[len("drl-"):]):
        assert secret not in text


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_rate_limit_is_shared_by_api_processes(two_apis: tuple[Settings, list[str], list[Path]]) -> None:
    settings, urls, _ = two_apis
    key, other = new_key(settings, "shared-a").key, new_key(settings, "shared-b").key
    clients = [httpx.Client(base_url=url, timeout=30, headers=auth(key)) for url in urls]
    try:
        codes = [clients[i % 2].get("/v1/models").status_code for i in range(7)]
        assert codes == [200] * 5 + [429] * 2, codes  # five in all, not five per process
        refused = clients[1].get("/v1/files")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert httpx.get(f"{urls[1]}/v1/models", headers=auth(other), timeout=30).status_code == 200
    finally:
        for client in clients:
            client.close()


def test_every_setting_is_documented() -> None:
    table = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    missing = [name for name in Settings.model_fields if f"DRLORA_{name.upper()}" not in table]
    assert not missing, f"add these to the configuration table in docs/service.md: {missing}"
