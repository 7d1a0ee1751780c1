"""Serving a stored file: only after it resolves inside its root and still matches the sha256 recorded when it was
written, and always with that sha256 in the response (`ETag`, `Digest`, `Repr-Digest`, `X-Content-SHA256`) so
that a client can check what it received."""

from __future__ import annotations

import base64
from pathlib import Path

from fastapi.responses import FileResponse

from service.errors import ServiceError
from service.storage import StorageError, verified_path
from service.uploads import safe_filename


def verified_download(root: Path, relative: str, sha256: str, *, what: str, media_type: str,
                      filename: str) -> FileResponse:
    try:
        path = verified_path(root, relative, sha256)
    except StorageError as e:
        raise ServiceError(f"the stored {what} failed its integrity check ({e}); it is not served. An operator "
                           "should restore it from a backup or delete it", code="artifact_integrity") from None
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    return FileResponse(path, media_type=media_type, filename=safe_filename(filename), headers={
        "ETag": f'"{sha256}"', "Digest": f"sha-256={digest}", "Repr-Digest": f"sha-256=:{digest}:",
        "X-Content-SHA256": sha256,
    })
