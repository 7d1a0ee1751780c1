"""Every error leaves in OpenAI's shape: {"error": {"message", "type", "param", "code"}} (+ "line" for datasets)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from service.db import is_unreachable
from service.errors import ServiceError

log = logging.getLogger("drlora.api")


def error_response(status: int, message: str, type: str, *, param: str | None = None, code: str | None = None,
                   line: int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if line is not None:
        body["line"] = line
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def service_error_response(exc: ServiceError, *, close: bool = False) -> JSONResponse:
    """`close`: answered before the body was read, so the connection ends rather than wait for the rest of it."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
    headers.update(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if close:
        headers["Connection"] = "close"
    return error_response(exc.status_code, exc.message, exc.type, param=exc.param, code=exc.code, line=exc.line,
                          headers=headers)


def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie", "form"):
        del loc[0]  # where the value was sent, not its name (a field may itself be called "path")
    if len(loc) >= 3 and loc[0] == "method" and loc[1] == loc[2]:
        del loc[1]  # pydantic names the union member by its tag, which is also the next key
    param = ".".join(loc) or None
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    return error_response(422, message, "invalid_request_error", param=param, code="invalid_value")


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}.get(
        exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
    )
    return error_response(exc.status_code, str(exc.detail), kind, headers=getattr(exc, "headers", None))


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database could not be reached (restart, failover, cut connections): a retryable 503, not a 500. The
    pool checks connections before use, so requests succeed again as soon as the server is back."""
    assert isinstance(exc, DBAPIError)
    if not is_unreachable(exc):
        return _unexpected(request, exc)
    return database_unavailable(exc)


def database_unavailable(exc: DBAPIError, *, close: bool = False) -> JSONResponse:
    log.warning("database unavailable: %s", str(exc.orig).strip().splitlines()[0] if exc.orig else exc)
    return error_response(503, "the database is unavailable; retry shortly", "service_unavailable",
                          code="database_unavailable", headers=_retry_headers(close))


def pool_exhausted(*, close: bool = False) -> JSONResponse:
    """Every pooled connection stayed busy past the pool's timeout: the service is overloaded for a moment, which
    is a retryable 503, never a 500."""
    log.warning("database connection pool exhausted: answering 503")
    return error_response(503, "the service is busy; retry shortly", "service_unavailable", code="service_busy",
                          headers=_retry_headers(close))


def _retry_headers(close: bool) -> dict[str, str]:
    return {"Retry-After": "1", **({"Connection": "close"} if close else {})}


def _pool_timeout(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PoolTimeout)
    return pool_exhausted()


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # this handler runs outside the middleware that answers and logs the request id (api/observe.py): do both here
    request_id = getattr(request.state, "request_id", None)
    log.exception("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return error_response(500, "internal server error", "server_error",
                          headers={"x-request-id": request_id} if request_id else None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _pool_timeout)
    app.add_exception_handler(Exception, _unexpected)
