"""The HTTP service: FastAPI routes over the database layer in `service`.

`service` holds what the worker shares (settings, tables, sessions, storage, the broker client, job state changes)
and imports no FastAPI; the routes, schemas and error handlers around it are HTTP-only. Nothing here imports torch or
the engine (the one exception, `drlora_core.formats`, is standard-library only).
"""
