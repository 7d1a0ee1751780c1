"""The Celery app of the worker, and why it is configured the way it is.

- One job per worker process: the solo pool runs the task in the worker's main thread, so the consumer loop is
  blocked while a job trains and takes no second message (prefetch 1 keeps the QoS window at one message when it
  does consume); the next job's message stays in the broker for an idle worker elsewhere.
  Run one worker per GPU (`CUDA_VISIBLE_DEVICES`). The solo pool also lets SIGTERM reach the running job: the
  worker's warm shutdown sets a flag the engine reads after each step, so it checkpoints and the job is requeued
  instead of being cut off.
- Acks early (`task_acks_late=False`): the message is only a doorbell carrying the job id. The job row is the durable
  record, and the sweep re-sends any job that sits queued unclaimed, so a message lost with a dead worker costs a
  sweep interval, while late acks on Redis would redeliver a long job's message to another worker after the
  visibility timeout even as the first still trains (harmless with our claim, but pointless traffic and log noise).
  Celery alone does not deliver this: it runs even an early ack from its event loop, which the solo pool blocks
  for the whole job, so the message stayed unacknowledged in Redis until the job ended. `_ack_on_receipt` acks it
  as it arrives, before the job starts.
- Time limits: the job's limit (`DRLORA_JOB_TIME_LIMIT_S`) is enforced cooperatively by the engine callback, so the
  job fails with a `timeout` error and the worker takes the next one; Celery's own limits need a forking pool and
  would kill the process mid-write, so they are not used.
- Routing profiles (`drlora.profile_routing`, worker/profile.py), adapter exports (`drlora.export_adapter`,
  worker/export.py) and generations (`drlora.generate`, worker/generate.py) share the queue and the pool: each waits
  for the job before it on this worker, like a job would.
- Retries: none at the Celery level. A training error is deterministic and fails the job at once; a lost worker is
  retried by the sweep up to `max_attempts`, each attempt resuming from the last recorded checkpoint.
- Webhooks: each worker process also runs the delivery loop (service/webhook_delivery.py) in a thread from the
  moment it is ready, so events go out while a job trains and the API never waits on a receiver; loops in several
  workers share the queue through conditional claims.
- Logs: while a job runs, every line the process writes (the heartbeat thread's too) carries its job id.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import task_received, worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy.orm import Session, sessionmaker

from service.broker import EXPORT_TASK, GENERATE_TASK, PROFILE_TASK, TRAIN_TASK, make_celery
from service.db import make_engine, make_sessionmaker
from service.logsetup import job_context
from service.settings import Settings, get_settings
from service.webhook_delivery import delivery_loop
from worker.export import run_export
from worker.generate import run_generation
from worker.job import run_job
from worker.profile import run_profile
from worker.recorder import shutdown_requested

log = logging.getLogger("drlora.worker")


def create_worker_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    app.conf.update(
        worker_pool="solo",
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        task_acks_late=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_max_retries=None,  # the consumer keeps reconnecting while Redis is away
    )
    # A frozen worker's open transaction would hold its job row's lock (and so the sweep's requeue) until it thaws;
    # a healthy worker is never idle inside a transaction for anything like half a lease.
    engine = make_engine(settings.sqlalchemy_url, application_name="drlora-worker",
                         idle_in_transaction_s=max(1.0, settings.lease_s / 2))
    factory: sessionmaker[Session] = make_sessionmaker(engine)

    @app.task(name=TRAIN_TASK, ignore_result=True)
    def train_job(job_id: str) -> str:
        with job_context(job_id, whole_process=True):  # one job per process (solo pool)
            outcome = run_job(job_id, factory, settings)
            log.info("job %s: %s", job_id, outcome)
        return outcome

    @app.task(name=PROFILE_TASK, ignore_result=True)
    def profile_routing(profile_id: str) -> str:
        outcome = run_profile(profile_id, factory, settings)
        log.info("profile %s: %s", profile_id, outcome)
        return outcome

    @app.task(name=EXPORT_TASK, ignore_result=True)
    def export_adapter(export_id: str) -> str:
        outcome = run_export(export_id, factory, settings)
        log.info("export %s: %s", export_id, outcome)
        return outcome

    @app.task(name=GENERATE_TASK, ignore_result=True)
    def generate_completions(generation_id: str) -> str:
        outcome = run_generation(generation_id, factory, settings)
        log.info("generation %s: %s", generation_id, outcome)
        return outcome

    deliveries = delivery_loop(factory, settings)

    def start_deliveries(sender: Any, **_: Any) -> None:
        if sender.app is app:  # signals are process-wide: only this app's worker starts this loop
            deliveries.start()

    def stop_deliveries(sender: Any, **_: Any) -> None:
        if sender.app is app:
            deliveries.stop()

    worker_ready.connect(start_deliveries, weak=False)
    worker_shutdown.connect(stop_deliveries, weak=False)
    return app


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    shutdown_requested.set()


@task_received.connect
def _ack_on_receipt(request: Any, **_: Any) -> None:
    """Ack a message now, in the consumer, rather than when Celery's loop next runs (after the job or profile)."""
    if request.name not in (TRAIN_TASK, PROFILE_TASK, EXPORT_TASK, GENERATE_TASK) or request.acknowledged:
        return
    try:
        request.message.ack()
    except Exception as e:  # the broker went away: Celery's own (late) ack, or the sweep, covers it
        log.warning("could not ack %s on receipt: %s", request.id, e)
        return
    request.acknowledged = True


def __getattr__(name: str) -> Celery:
    # `celery -A worker.app worker` finds the app built from the environment's settings.
    if name == "app":
        return create_worker_app(get_settings())
    raise AttributeError(name)
