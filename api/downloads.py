"""Serving a stored file: only from inside its root, only bytes that match the sha256 recorded when it was written,
and always with that sha256 in the response (`ETag`, `Digest`, `Repr-Digest` of the whole file, `X-Content-SHA256`)
so that a client can check what it received.

Ranges: `Range: bytes=N-` / `bytes=N-M` answer 206 with `Content-Range` (Starlette's `FileResponse` serves them;
`Accept-Ranges: bytes` is on every answer); a range that starts past the end answers 416 with `Content-Range:
bytes */size` in our error shape; `If-Range` with the ETag (or the Last-Modified date) keeps the range, anything else
answers the whole file with 200, so a client resuming a file that changed starts over.

Integrity without reading a large file twice per request: a file's sha256 is checked at most once per version of
the file on disk, remembered by (path, size, mtime_ns, ctime_ns, inode) in this process (any write changes the key,
so the next answer checks again). A version not yet checked:
- up to VERIFY_FIRST_MAX_BYTES (adapters, datasets): hashed before the answer, so a mismatch is a clean 500
  `artifact_integrity` and no byte of it leaves;
- larger (a merged model), whole file: verified while it streams. The hash runs over the bytes as they are sent and
  the last chunk is held back until it matches, so on a mismatch the connection is cut before the body is complete
  (the client sees a short read, never a complete wrong file) and the event is logged;
- larger, a range: hashed first (one read), then the range is served.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Send

from drlora_core.atomic import sha256_file
from service.errors import InvalidRequest, ServiceError
from service.storage import StorageError, resolve_inside
from service.uploads import safe_filename

log = logging.getLogger("drlora.api")

FileKey = tuple[str, int, int, int, int]
CHUNK = 1 << 20
VERIFY_FIRST_MAX_BYTES = 64 << 20


class VerifiedFiles:
    """The file versions (path, size, mtime_ns, ctime_ns, inode) whose content was seen to match a sha256: a bounded LRU."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[FileKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def matches(self, key: FileKey, sha256: str) -> bool:
        with self._lock:
            if self._seen.get(key) != sha256:
                return False
            self._seen.move_to_end(key)
            return True

    def remember(self, key: FileKey, sha256: str) -> None:
        with self._lock:
            self._seen[key] = sha256
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)


VERIFIED = VerifiedFiles()


class RangeNotSatisfiableError(ServiceError):
    status_code = 416
    type = "invalid_request_error"


class VerifyingFileResponse(FileResponse):
    """A whole-file answer hashed as it streams; the last chunk goes out only if the whole file matched."""

    chunk_size = CHUNK

    def __init__(self, path: Path, *, expected: str, on_verified: Callable[[], None], **kwargs: object) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self.expected, self.on_verified = expected, on_verified

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        if send_header_only:
            await super()._handle_simple(send, True, False)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        digest = hashlib.sha256()
        async with self._open_file() as file:
            pending = await file.read(self.chunk_size)
            while True:
                digest.update(pending)
                following = await file.read(self.chunk_size) if pending else b""
                if not following:
                    break
                await send({"type": "http.response.body", "body": pending, "more_body": True})
                pending = following
        if digest.hexdigest() != self.expected:
            log.error("stored file %s does not match its recorded sha256; the download was cut short", self.path)
            raise StorageError("stored file does not match its recorded sha256")
        self.on_verified()
        await send({"type": "http.response.body", "body": pending, "more_body": False})


def verified_download(request: Request, root: Path, relative: str, sha256: str, *, what: str, media_type: str,
                      filename: str) -> FileResponse:
    try:
        path = resolve_inside(root, relative)
        stat = path.stat()
    except (StorageError, OSError) as e:
        raise _integrity_error(what, e) from None
    digest = base64.b64encode(bytes.fromhex(sha256)).decode()
    headers = {"ETag": f'"{sha256}"', "Digest": f"sha-256={digest}", "Repr-Digest": f"sha-256=:{digest}:",
               "X-Content-SHA256": sha256, "Accept-Ranges": "bytes"}
    key: FileKey = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    common = {"media_type": media_type, "filename": safe_filename(filename), "headers": headers, "stat_result": stat}
    ranged = _serves_range(request, headers["ETag"], stat.st_mtime, stat.st_size)
    if VERIFIED.matches(key, sha256):
        return FileResponse(path, **common)  # type: ignore[arg-type]
    if ranged or stat.st_size <= VERIFY_FIRST_MAX_BYTES:
        if sha256_file(path) != sha256:
            raise _integrity_error(what, StorageError("stored file does not match its recorded sha256"))
        VERIFIED.remember(key, sha256)
        return FileResponse(path, **common)  # type: ignore[arg-type]
    return VerifyingFileResponse(path, expected=sha256, on_verified=lambda: VERIFIED.remember(key, sha256),
                                 **common)


def _serves_range(request: Request, etag: str, mtime: float, size: int) -> bool:
    """Whether the answer will be a range (as Starlette decides it), after refusing a bad one in our error shape."""
    http_range = request.headers.get("range")
    if http_range is None:
        return False
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range not in (etag, formatdate(mtime, usegmt=True)):
        return False  # the file changed since the client's copy: the whole file, 200
    try:
        FileResponse._parse_range_header(http_range, size)
    except MalformedRangeHeader as e:
        raise InvalidRequest(f"the Range header is not a byte range this server serves ({e.content}); send "
                             "`bytes=START-` or `bytes=START-END`", param="Range", code="invalid_range") from None
    except RangeNotSatisfiable:
        error = RangeNotSatisfiableError(f"the range starts past the end of the file ({size} bytes)",
                                         param="Range", code="range_not_satisfiable")
        error.headers = {"Content-Range": f"bytes */{size}"}
        raise error from None
    return True


def _integrity_error(what: str, e: Exception) -> ServiceError:
    return ServiceError(f"the stored {what} failed its integrity check ({e}); it is not served. An operator "
                        "should restore it from a backup or delete it", code="artifact_integrity")
