"""Errors that carry their HTTP status, raised anywhere in the service and rendered in OpenAI's error shape.

    ServiceError (500 server_error)
    ├── InvalidRequest (400 invalid_request_error; `param`, and `line` for datasets)
    ├── Unauthorized (401 authentication_error)
    ├── NotFound (404 not_found_error): also what another tenant's id gets
    ├── Conflict (409 conflict_error): the job's state does not allow the action
    ├── PayloadTooLarge (413 invalid_request_error)
    ├── Unprocessable (422 invalid_request_error): e.g. an Idempotency-Key reused with another body
    ├── TooManyRequests (429 rate_limit_error; `retry_after` becomes the Retry-After header)
    └── Unavailable (503 service_unavailable)
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    type = "server_error"
    retry_after: int | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.headers: dict[str, str] = {}  # extra response headers (e.g. Content-Range on a 416)
        self.message = message
        self.param = param
        self.code = code
        self.line = line


class InvalidRequest(ServiceError):
    status_code = 400
    type = "invalid_request_error"


class Unauthorized(ServiceError):
    status_code = 401
    type = "authentication_error"


class NotFound(ServiceError):
    status_code = 404
    type = "not_found_error"


class Conflict(ServiceError):
    status_code = 409
    type = "conflict_error"


class PayloadTooLarge(ServiceError):
    status_code = 413
    type = "invalid_request_error"


class Unprocessable(ServiceError):
    status_code = 422
    type = "invalid_request_error"


class TooManyRequests(ServiceError):
    status_code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, retry_after)


class Unavailable(ServiceError):
    status_code = 503
    type = "service_unavailable"
