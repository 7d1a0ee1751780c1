"""Sending queued webhook deliveries, with retries and exponential backoff; run by the worker processes.

A delivery loop takes a due delivery with one conditional UPDATE that counts the attempt and holds the row for
`hold_s` (so loops in several workers never send the same attempt twice, and a loop that died mid-send releases it
when the hold runs out), checks the URL again and connects to the address it checked, posts the signed event, and
records the attempt (status code or error). A 2xx answer delivers it; anything else is retried after
`webhook_backoff_s * 2**(attempt - 1)` seconds (at most `webhook_backoff_max_s`), until `webhook_max_attempts`
attempts have failed. Redirects are not followed: a receiver that moved must be registered again.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.ids import now
from service.logsetup import job_context
from service.periodic import Periodic
from service.settings import Settings
from service.statuses import DeliveryStatus
from service.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from service.webhook_signing import headers as signed_headers
from service.webhook_urls import Target, UnsafeUrl, resolve

log = logging.getLogger("drlora.webhooks")

USER_AGENT = "drlora-webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024  # read (and drop) this much of an answer, so the connection closes cleanly
BATCH = 50  # deliveries one pass looks at


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    attempt: int
    event_type: str
    payload: dict[str, Any]
    url: str
    secret: str


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return min(settings.webhook_backoff_s * 2 ** (attempt - 1), settings.webhook_backoff_max_s)


def hold_s(settings: Settings) -> float:
    # connect, send and read each have the timeout; a resolve and some slack on top
    return 3 * settings.webhook_timeout_s + 30.0


def body_of(payload: dict[str, Any]) -> bytes:
    """The same bytes on every attempt (the signature covers them)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def claim(factory: sessionmaker[Session], delivery_id: str, settings: Settings) -> Claimed | None:
    t = now()
    with transaction(factory) as s:
        row = s.get(WebhookDelivery, delivery_id)
        if row is None or row.status != DeliveryStatus.pending or row.next_attempt_at > t:
            return None
        if row.attempts >= settings.webhook_max_attempts:  # its last attempt died with its loop: nothing recorded
            s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                    WebhookDelivery.attempts == row.attempts)
                      .values(status=DeliveryStatus.failed, finished_at=t).execution_options(synchronize_session=False))
            return None
        taken = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.pending,
                   WebhookDelivery.attempts == row.attempts, WebhookDelivery.next_attempt_at <= t)
            .values(attempts=row.attempts + 1, next_attempt_at=t + hold_s(settings))
            .execution_options(synchronize_session=False))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None  # another loop took it first
        endpoint = s.get_one(WebhookEndpoint, row.endpoint_id)
        return Claimed(delivery_id, row.attempts + 1, row.event_type, dict(row.payload), endpoint.url,
                       endpoint.secret)


def post(target: Target, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST to the checked address (never a second DNS lookup), with TLS verified against the URL's host name."""
    sock = socket.create_connection((target.address, target.port), timeout=timeout_s)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout_s)
    try:
        if target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        conn.sock = sock  # http.client uses a socket it is given instead of connecting by name
        conn.request("POST", target.path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        return response.status
    finally:
        conn.close()
        sock.close()


def attempt(claimed: Claimed, settings: Settings) -> tuple[int | None, str | None]:
    """(status code, error) of one try; exactly one of them is set."""
    body = body_of(claimed.payload)
    try:
        target = resolve(claimed.url, allow_private=settings.webhook_allow_private)
        code = post(target, body, signed_headers(claimed.secret, claimed.delivery_id, int(time.time()), body),
                    settings.webhook_timeout_s)
    except UnsafeUrl as e:
        return None, f"refused: {e.message}"
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}"[:1000]
    return code, None


def record(factory: sessionmaker[Session], claimed: Claimed, started: float, code: int | None, error: str | None,
           settings: Settings) -> str:
    """Write the attempt and the delivery's next state; answers that state (delivered | pending | failed)."""
    t = now()
    delivered = code is not None and 200 <= code < 300
    state = DeliveryStatus.delivered if delivered else DeliveryStatus.failed if claimed.attempt >= settings.webhook_max_attempts else DeliveryStatus.pending
    with transaction(factory) as s:
        s.add(WebhookAttempt(delivery_id=claimed.delivery_id, attempt=claimed.attempt, started_at=started,
                             duration_s=t - started, status_code=code, error=error))
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claimed.delivery_id, WebhookDelivery.attempts == claimed.attempt,
                   WebhookDelivery.status == DeliveryStatus.pending)
            .values(status=state, finished_at=None if state == DeliveryStatus.pending else t,
                    next_attempt_at=t + retry_delay(settings, claimed.attempt) if state == DeliveryStatus.pending else t)
            .execution_options(synchronize_session=False))
    return state


def deliver_one(factory: sessionmaker[Session], delivery_id: str, settings: Settings) -> str | None:
    claimed = claim(factory, delivery_id, settings)
    if claimed is None:
        return None
    with job_context(str(claimed.payload.get("data", {}).get("id", ""))):
        started = now()
        code, error = attempt(claimed, settings)
        state = record(factory, claimed, started, code, error, settings)
        extra = {"delivery_id": claimed.delivery_id, "event_type": claimed.event_type, "attempt": claimed.attempt}
        if state == DeliveryStatus.delivered:
            log.info("webhook %s delivered (HTTP %s)", claimed.event_type, code, extra=extra)
        else:
            log.warning("webhook %s attempt %d failed (%s); %s", claimed.event_type, claimed.attempt,
                        error or f"HTTP {code}",
                        "giving up" if state == DeliveryStatus.failed else f"retrying in {retry_delay(settings, claimed.attempt):.0f} s",
                        extra=extra)
    return state


def deliver_due(factory: sessionmaker[Session], settings: Settings) -> int:
    """One pass over the due deliveries, oldest first; answers how many attempts it made. A pass with nothing due
    only reads (no write lock taken on SQLite)."""
    with factory() as s:
        due = s.scalars(select(WebhookDelivery.id)
                        .where(WebhookDelivery.status == DeliveryStatus.pending, WebhookDelivery.next_attempt_at <= now())
                        .order_by(WebhookDelivery.next_attempt_at).limit(BATCH)).all()
    return sum(deliver_one(factory, delivery_id, settings) is not None for delivery_id in due)


def delivery_loop(factory: sessionmaker[Session], settings: Settings) -> Periodic:
    """Runs `deliver_due` every `webhook_poll_interval_s` once started; stopping waits for a delivery in flight."""
    return Periodic("drlora-webhooks", settings.webhook_poll_interval_s, lambda: deliver_due(factory, settings),
                    log=log, stop_timeout_s=hold_s(settings))
