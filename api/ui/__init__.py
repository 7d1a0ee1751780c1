"""The web dashboard and the offline API docs: static files the API process serves, no server-side rendering.

The dashboard at `/ui/` is plain JavaScript modules that call the same authenticated `/v1` routes as the SDK, with
the API key from the tab's sessionStorage as a Bearer header (no cookies). Third-party code (uPlot, Swagger UI) is
vendored under `static/vendor/` from npm by `web/copy-vendor.mjs`, so nothing is fetched from a CDN at run time.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from api.ui.headers import SecurityHeaders

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    """`/` redirects to `/ui/`; `/docs` is Swagger UI from local files; every answer carries security headers."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/ui", include_in_schema=False)
    def ui_without_slash() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
    app.add_middleware(SecurityHeaders)
