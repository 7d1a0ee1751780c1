from __future__ import annotations

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    line: int | None = None


class ErrorPublic(BaseModel):
    error: ErrorBody
