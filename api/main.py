"""The FastAPI application: `create_app(settings)`; `uvicorn api.main:app` uses the environment's settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import handlers, ui
from api.auth import AuthGate
from api.limits import BodyLimit
from api.logredact import install_key_redaction
from api.metrics import ApiMetrics
from api.metrics import router as metrics_router
from api.nul import RefuseNul
from api.observe import Observe
from api.operations import describe
from api.ratelimit import make_limiter
from api.routes import drlora, events, exports, files, generations, health, jobs, models, profiles, webhooks
from api.schemas.errors import ErrorPublic
from api.streams import StreamSlots
from service.broker import make_celery
from service.db import make_engine, make_sessionmaker
from service.settings import Settings, get_settings
from service.sweep import sweep_thread

log = logging.getLogger("drlora.api")

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorPublic, "description": text} for code, text in (
        (400, "Invalid request"), (401, "Missing or invalid API key"), (404, "Not found (also another tenant's id)"),
        (409, "The job's state does not allow this"), (413, "Upload too large"), (422, "Validation error"),
        (500, "Server error"),
    )
}
ERROR_RESPONSES[429] = {
    "model": ErrorPublic, "description": "Rate limit (`rate_limit_exceeded`) or active-job quota "
    "(`concurrency_quota_exceeded`) reached; retry after the seconds in Retry-After",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}},
}
ERROR_RESPONSES[503] = {
    "model": ErrorPublic, "description": "The database is unreachable for a moment (`database_unavailable`: a "
    "restart or failover); retry after the seconds in Retry-After",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}},
}


def create_app(settings: Settings | None = None, *, sweep: bool = True) -> FastAPI:
    settings = settings or get_settings()
    install_key_redaction()
    settings.make_private_dirs()
    engine = make_engine(settings.sqlalchemy_url, pool_timeout_s=settings.db_pool_timeout_s)
    factory = make_sessionmaker(engine)
    celery = make_celery(settings)
    limiter = make_limiter(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = sweep_thread(factory, celery, settings) if sweep else None
        if sweeper:
            sweeper.start()
        yield
        if sweeper:
            sweeper.stop()
        limiter.close()
        engine.dispose()

    app = FastAPI(title="drlora", version="0.1.0", lifespan=lifespan, responses=ERROR_RESPONSES, docs_url=None,
                  redoc_url=None,
                  description="Fine-tune Mixture-of-Experts models with DR-LoRA; OpenAI fine-tuning API shapes.")
    app.state.settings, app.state.engine, app.state.sessionmaker, app.state.celery = settings, engine, factory, celery
    app.state.limiter, app.state.stream_slots = limiter, StreamSlots(settings.max_streams_per_key)
    app.state.metrics = ApiMetrics(factory)
    handlers.install(app)
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthGate)  # outside BodyLimit: no byte of the body is read before the key is checked
    app.add_middleware(RefuseNul)
    app.add_middleware(Observe, metrics=app.state.metrics)  # added last: the outermost, so it sees every answer
    for module in (health, files, models, jobs, events, drlora, exports, profiles, generations, webhooks):
        describe(module.router)
        app.include_router(module.router)
    if settings.metrics_enabled:
        app.include_router(metrics_router)
    ui.mount(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app on first access, so importing this module has no side effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)
