"""Webhooks: endpoints per tenant, events enqueued with the change that causes them, deliveries signed per the
Standard Webhooks specification, retried with exponential backoff and recorded per attempt; receiver URLs on
non-public addresses refused at registration and again at delivery. On PostgreSQL and SQLite, each test on a
database of its own (the delivery queue is global), with a receiver on 127.0.0.1 (`webhook_allow_private` on)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any, get_args

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.main import create_app
from api.schemas.webhooks import EventType
from drlora_core.callbacks import ExpertStats, GrowthEvent
from service.db import transaction
from service.ids import now
from service.settings import Settings
from service.sweep import reclaim_lost
from service.tables import Job, WebhookAttempt, WebhookDelivery
from service.webhook_delivery import deliver_due, delivery_loop, retry_delay
from service.webhook_urls import UnsafeUrl, resolve
from service.webhooks import EVENT_TYPES, enqueue_job_event
from tests.support.ops import Tenant, add_job, new_tenant, own_database, session_factory
from tests.support.service import wait_until
from tests.support.webhook_receiver import Receiver, receiving, verify
from worker.lease import Heartbeat, claim
from worker.recorder import Recorder

pytestmark = pytest.mark.timeout(120)

HOOKS = "/v1/webhooks"
ALL = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled", "fine_tuning.job.growth"]
PUBLIC_IP = "93.184.216.34"  # a global address, written as a literal so no DNS is needed


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    with own_database(request.param, tmp_path, redis_url, webhook_allow_private=True, webhook_backoff_s=0.2,
                      webhook_max_attempts=4, webhook_timeout_s=5) as s:
        yield s


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    with session_factory(settings) as f:
        yield f


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sweep=False)) as c:
        yield c


def register(client: TestClient, tenant: Tenant, url: str, events: list[str] | None = None) -> dict[str, Any]:
    r = client.post(HOOKS, headers=tenant.auth, json={"url": url, "events": events or ALL})
    assert r.status_code == 200, r.text
    return dict(r.json())


def deliveries(factory: sessionmaker[Session]) -> list[WebhookDelivery]:
    with factory() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def attempts(factory: sessionmaker[Session], delivery_id: str) -> list[WebhookAttempt]:
    with factory() as s:
        return list(s.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
                              .order_by(WebhookAttempt.attempt)))


# ---------------------------------------------------------------- registration

def test_the_secret_is_shown_once_and_endpoints_are_the_tenants_own(client: TestClient,
                                                                    factory: sessionmaker[Session]) -> None:
    owner, other = new_tenant(factory), new_tenant(factory)
    created = register(client, owner, "http://127.0.0.1:9/hook", ["fine_tuning.job.succeeded"])
    assert created["secret"].startswith("whsec_") and created["object"] == "webhook_endpoint"
    assert created["events"] == ["fine_tuning.job.succeeded"] and created["url"] == "http://127.0.0.1:9/hook"
    shown = client.get(f"{HOOKS}/{created['id']}", headers=owner.auth).json()
    listed = client.get(HOOKS, headers=owner.auth).json()
    assert "secret" not in shown and [h["id"] for h in listed["data"]] == [created["id"]]
    assert created["secret"] not in str(listed)
    assert client.get(HOOKS, headers=other.auth).json()["data"] == []
    assert client.get(f"{HOOKS}/{created['id']}", headers=other.auth).status_code == 404
    assert client.delete(f"{HOOKS}/{created['id']}", headers=other.auth).status_code == 404
    assert client.delete(f"{HOOKS}/{created['id']}", headers=owner.auth).json()["deleted"] is True
    assert client.get(f"{HOOKS}/{created['id']}", headers=owner.auth).status_code == 404


def test_the_request_schema_offers_exactly_the_event_types_the_service_sends() -> None:
    assert list(get_args(EventType)) == list(EVENT_TYPES) == ALL


def test_unknown_event_types_and_fields_are_refused(client: TestClient, factory: sessionmaker[Session]) -> None:
    tenant = new_tenant(factory)
    for body in ({"url": "http://127.0.0.1:9/", "events": ["fine_tuning.job.started"]},
                 {"url": "http://127.0.0.1:9/", "events": []},
                 {"url": "http://127.0.0.1:9/", "events": ALL, "secret": "whsec_mine"}):
        r = client.post(HOOKS, headers=tenant.auth, json=body)
        assert r.status_code == 422, r.text


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/", "http://100.64.0.1/", "http://[fe80::1]/", "http://[fc00::1]/", "http://224.0.0.1/",
])
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="non-global"):
        resolve(url, allow_private=False)
    assert resolve(url, allow_private=True).port in (80, 8080)


@pytest.mark.parametrize("url, why", [
    ("ftp://93.184.216.34/", "http"), ("/relative", "http"), ("http://user:pw@93.184.216.34/", "credentials"),
    ("http://no-such-host.invalid/", "does not resolve"), ("http://93.184.216.34/#frag", "fragment"),
    ("http://93.184.216.34:99999/", "not a valid URL"),
])
def test_malformed_or_unresolvable_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        resolve(url, allow_private=True)


def test_a_public_address_is_accepted_and_the_path_kept() -> None:
    target = resolve(f"https://{PUBLIC_IP}/in/hooks?x=1", allow_private=False)
    assert (target.scheme, target.address, target.port, target.path) == ("https", PUBLIC_IP, 443, "/in/hooks?x=1")


def test_registration_refuses_loopback_by_default(settings: Settings, factory: sessionmaker[Session]) -> None:
    with TestClient(create_app(settings.model_copy(update={"webhook_allow_private": False}), sweep=False)) as c:
        tenant = new_tenant(factory)
        r = c.post(HOOKS, headers=tenant.auth, json={"url": "http://127.0.0.1:9/hook", "events": ALL})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook_url", r.text
        assert r.json()["error"]["param"] == "url" and "DRLORA_WEBHOOK_ALLOW_PRIVATE" in r.text
        assert c.get(HOOKS, headers=tenant.auth).json()["data"] == []
        assert register(c, tenant, f"https://{PUBLIC_IP}/hook")["url"] == f"https://{PUBLIC_IP}/hook"


# ---------------------------------------------------------------- events and signed deliveries

def test_cancelling_a_job_sends_a_signed_cancelled_event(client: TestClient, factory: sessionmaker[Session],
                                                         settings: Settings) -> None:
    tenant, other = new_tenant(factory), new_tenant(factory)
    with receiving() as receiver, receiving() as growth_only, receiving() as others:
        hook = register(client, tenant, receiver.url, ["fine_tuning.job.cancelled", "fine_tuning.job.succeeded"])
        register(client, tenant, growth_only.url, ["fine_tuning.job.growth"])
        register(client, other, others.url)
        job_id = add_job(factory, tenant)
        assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.auth).json()["status"] \
            == "cancelled"
        assert [d.event_type for d in deliveries(factory)] == ["fine_tuning.job.cancelled"]  # one subscriber
        assert deliver_due(factory, settings) == 1
        [got] = receiver.received
        assert growth_only.received == [] and others.received == []
    assert verify(hook["secret"], got)
    assert not verify(register(client, tenant, receiver.url)["secret"], got)  # another secret does not verify
    sdk = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    sdk.webhooks.verify_signature(got.body, got.headers, secret=hook["secret"])  # OpenAI's SDK agrees (raises if not)
    sdk.close()
    event = got.event
    assert event["object"] == "event" and event["type"] == "fine_tuning.job.cancelled"
    assert event["data"] == {"id": job_id} and event["id"].startswith("evt-")
    assert abs(event["created_at"] - time.time()) < 60
    assert got.headers["content-type"] == "application/json"
    [delivery] = deliveries(factory)
    assert (delivery.status, delivery.attempts, got.headers["webhook-id"]) == ("delivered", 1, delivery.id)
    assert [(a.attempt, a.status_code, a.error) for a in attempts(factory, delivery.id)] == [(1, 200, None)]
    assert deliver_due(factory, settings) == 0  # delivered once, never again


def test_growth_recorded_by_the_worker_sends_a_growth_event(client: TestClient, factory: sessionmaker[Session],
                                                            settings: Settings, tmp_path: Path) -> None:
    tenant = new_tenant(factory)
    with receiving() as receiver:
        hook = register(client, tenant, receiver.url, ["fine_tuning.job.growth"])
        job_id = add_job(factory, tenant)
        owned = claim(factory, job_id, "w1", lease_s=30)
        assert owned is not None
        recorder = Recorder(factory, owned, Heartbeat(factory, owned, interval_s=1, lease_s=30),
                            runs_root=tmp_path, artifact_root=tmp_path, time_limit_s=60)
        grown = [GrowthEvent(step=4, layer=0, expert=e, old_rank=2, new_rank=4, saliency=1.0, frequency=0.5,
                             importance=0.5) for e in (1, 3)]
        recorder.on_growth(grown, ExpertStats(step=4, frequency=[[0.5] * 4], importance=[[0.5] * 4],
                                              saliency=[[1.0] * 4], ranks=[[2, 4, 2, 4]]))
        deliver_due(factory, settings)
        [got] = receiver.received
    assert verify(hook["secret"], got)
    assert got.event["type"] == "fine_tuning.job.growth"
    assert got.event["data"] == {"id": job_id, "step": 4, "grown_experts": 2, "added_rank": 4}


def test_a_job_the_sweep_fails_sends_a_failed_event(client: TestClient, factory: sessionmaker[Session],
                                                    settings: Settings) -> None:
    tenant = new_tenant(factory)
    with receiving() as receiver:
        hook = register(client, tenant, receiver.url, ["fine_tuning.job.failed"])
        job_id = add_job(factory, tenant, status="running", attempt=3, lost_attempts=2,
                         lease_expires_at=now() - 1)
        reclaim_lost(factory)
        deliver_due(factory, settings)
        [got] = receiver.received
    assert verify(hook["secret"], got) and got.event["type"] == "fine_tuning.job.failed"
    assert got.event["data"]["id"] == job_id


def test_an_event_is_enqueued_only_if_its_transaction_commits(client: TestClient,
                                                              factory: sessionmaker[Session]) -> None:
    tenant = new_tenant(factory)
    register(client, tenant, "http://127.0.0.1:9/hook")
    job_id = add_job(factory, tenant)
    with pytest.raises(RuntimeError), transaction(factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="failed"))
        assert enqueue_job_event(s, job_id, "fine_tuning.job.failed") == 1
        raise RuntimeError("the status change fails")
    assert deliveries(factory) == []


# ---------------------------------------------------------------- retries

def test_a_receiver_down_at_first_gets_the_event_after_retries(client: TestClient, factory: sessionmaker[Session],
                                                               settings: Settings) -> None:
    tenant = new_tenant(factory)
    receiver = Receiver()  # its port is reserved, nothing listens yet
    hook = register(client, tenant, receiver.url, ["fine_tuning.job.cancelled"])
    job_id = add_job(factory, tenant)
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=tenant.auth)
    # enough attempts that a slow machine cannot use them all up before the receiver comes up
    settings = settings.model_copy(update={"webhook_poll_interval_s": 0.05, "webhook_max_attempts": 8})
    loop = delivery_loop(factory, settings)
    loop.start()
    try:
        [delivery] = deliveries(factory)
        wait_until(lambda: len(attempts(factory, delivery.id)) >= 2, 30, what="two failed attempts")
        receiver.start()
        up = time.time()
        wait_until(lambda: receiver.received, 30, what="the delivery after the receiver came up")
    finally:
        loop.stop()
        receiver.stop()
    tried = attempts(factory, delivery.id)
    assert [a.status_code for a in tried[:-1]] == [None] * (len(tried) - 1) and tried[-1].status_code == 200
    assert all("Connection" in (a.error or "") for a in tried[:-1]), [a.error for a in tried]
    assert len(tried) <= settings.webhook_max_attempts
    waits = [after.started_at - before.started_at for before, after in pairwise(tried)]
    for before, wait in zip(tried, waits, strict=False):  # exponential: each wait at least the backoff
        assert wait >= retry_delay(settings, before.attempt) * 0.9
    backend = "sqlite" if settings.is_sqlite else "postgresql"
    print(f"\nwebhook retries ({backend}): {len(tried) - 1} failed attempts, waits "
          f"{', '.join(f'{w:.2f}' for w in waits)} s, delivered {tried[-1].started_at - up:.2f} s after the "
          "receiver came up")
    [got] = receiver.received
    assert verify(hook["secret"], got) and got.headers["webhook-id"] == delivery.id
    assert deliveries(factory)[0].status == "delivered"


def test_error_answers_are_retried_then_given_up_after_max_attempts(client: TestClient,
                                                                     factory: sessionmaker[Session],
                                                                     settings: Settings) -> None:
    tenant = new_tenant(factory)
    with receiving(answers=(500, 503, 404, 500, 500)) as receiver:
        register(client, tenant, receiver.url, ["fine_tuning.job.cancelled"])
        client.post(f"/v1/fine_tuning/jobs/{add_job(factory, tenant)}/cancel", headers=tenant.auth)
        [delivery] = deliveries(factory)

        def finished() -> bool:
            deliver_due(factory, settings)
            return deliveries(factory)[0].status != "pending"

        wait_until(finished, 30, interval=0.05, what="the delivery to give up")
        ids = {r.headers["webhook-id"] for r in receiver.received}
    tried = attempts(factory, delivery.id)
    assert [a.status_code for a in tried] == [500, 503, 404, 500]  # webhook_max_attempts=4
    assert deliveries(factory)[0].status == "failed" and ids == {delivery.id}  # one id on every retry


def test_the_address_is_checked_again_at_delivery(client: TestClient, factory: sessionmaker[Session],
                                                  settings: Settings) -> None:
    tenant = new_tenant(factory)
    with receiving() as receiver:
        register(client, tenant, receiver.url, ["fine_tuning.job.cancelled"])  # allowed when registered
        client.post(f"/v1/fine_tuning/jobs/{add_job(factory, tenant)}/cancel", headers=tenant.auth)
        deliver_due(factory, settings.model_copy(update={"webhook_allow_private": False}))
        assert receiver.received == []
    [delivery] = deliveries(factory)
    [tried] = attempts(factory, delivery.id)
    assert tried.status_code is None and (tried.error or "").startswith("refused:") and "127.0.0.1" in tried.error
    assert delivery.status == "pending"  # retried later, in case the name points elsewhere again


def test_deleting_an_endpoint_drops_its_pending_deliveries(client: TestClient,
                                                           factory: sessionmaker[Session]) -> None:
    tenant = new_tenant(factory)
    hook = register(client, tenant, "http://127.0.0.1:9/hook")
    client.post(f"/v1/fine_tuning/jobs/{add_job(factory, tenant)}/cancel", headers=tenant.auth)
    assert len(deliveries(factory)) == 1
    assert client.delete(f"{HOOKS}/{hook['id']}", headers=tenant.auth).status_code == 200
    assert deliveries(factory) == []


def test_an_attempt_whose_loop_died_is_counted_and_taken_again_after_its_hold(
        client: TestClient, factory: sessionmaker[Session], settings: Settings) -> None:
    tenant = new_tenant(factory)
    with receiving() as receiver:
        register(client, tenant, receiver.url, ["fine_tuning.job.cancelled"])
        for _ in range(2):
            client.post(f"/v1/fine_tuning/jobs/{add_job(factory, tenant)}/cancel", headers=tenant.auth)
        first, last = deliveries(factory)
        with transaction(factory) as s:  # as a loop that claimed them and died: its hold ran out, nothing recorded
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == first.id).values(attempts=1))
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == last.id)
                      .values(attempts=settings.webhook_max_attempts))
        assert deliver_due(factory, settings) == 1
        assert [r.headers["webhook-id"] for r in receiver.received] == [first.id]
    by_id = {d.id: d for d in deliveries(factory)}
    assert (by_id[first.id].status, by_id[first.id].attempts) == ("delivered", 2)
    assert (by_id[last.id].status, attempts(factory, last.id)) == ("failed", [])  # no attempt left to make
