"""The Celery client both sides share: the API sends `drlora.train_job(job_id)`, the worker consumes it.

The message is only a doorbell carrying the job id; the job row decides whether anything runs. Embedded, the broker
is kombu's filesystem transport under the data dir (no server to run); in production it is Redis.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

TRAIN_TASK = "drlora.train_job"
PROFILE_TASK = "drlora.profile_routing"  # a routing profile (service/profiles.py): the profile id only
EXPORT_TASK = "drlora.export_adapter"  # an adapter export (service/exports.py): the export id only
GENERATE_TASK = "drlora.generate"  # completions by a job's adapter (service/generations.py): the generation id


def make_celery(settings: Settings) -> Celery:
    app = Celery("drlora", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.task_queue,
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        # A send must not hang a request when the broker is down: fail fast, the sweep re-sends later.
        broker_connection_timeout=2,
        broker_connection_max_retries=0,
        task_publish_retry=False,
    )
    if settings.broker.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # kombu's default is ./control in the working dir
            "store_processed": False,
        }
    else:
        app.conf.broker_transport_options = _redis_options(settings)
    return app


def _redis_options(settings: Settings) -> dict[str, float]:
    """Short socket timeouts and no reconnect loop (kombu's default retries for `socket_connect_timeout`, 2 s, on
    every send), so that a send while Redis is away fails at once and the sweep re-sends later. A worker's consumer
    reconnects on its own terms (`broker_connection_max_retries`), which this does not change.

    With a visibility timeout set, unacknowledged messages are also looked for every few seconds rather than kombu's
    default of about every 100 s, so that a shorter timeout means what it says. Workers ack on receipt (see
    worker/app.py), so this only matters for a delivery whose ack was lost; the job row makes it a no-op anyway.
    """
    options: dict[str, float] = {"socket_connect_timeout": 2, "socket_timeout": 5, "max_retries": 0}
    timeout = settings.broker_visibility_timeout_s
    if timeout is not None:
        options.update(visibility_timeout=timeout, unacked_restore_interval=max(1, min(10, int(timeout))),
                       unacked_restore_throttle=1)
    return options


def send_train(app: Celery, job_id: str) -> None:
    """Raises whatever the broker raises; callers leave the job queued and let the sweep retry."""
    app.send_task(TRAIN_TASK, args=[job_id], retry=False)


def send_profile(app: Celery, profile_id: str) -> None:
    """Raises whatever the broker raises; the profile stays queued and the sweep re-sends it."""
    app.send_task(PROFILE_TASK, args=[profile_id], retry=False)


def send_export(app: Celery, export_id: str) -> None:
    """Raises whatever the broker raises; the export stays queued and the sweep re-sends it."""
    app.send_task(EXPORT_TASK, args=[export_id], retry=False)
def send_generation(app: Celery, generation_id: str) -> None:
    """Raises whatever the broker raises; the generation stays queued and the sweep re-sends it."""
    app.send_task(GENERATE_TASK, args=[generation_id], retry=False)
