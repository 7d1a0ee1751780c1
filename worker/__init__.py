"""The training worker: a Celery app whose one task claims a job row, trains it with the engine and publishes the
adapter. It imports the shared layer `service` (tables, sessions, storage) but no HTTP code."""
