"""Downloads that stream, resume and verify: `fetch` writes `PATH.part` while hashing it, resumes an existing part
with `Range` (after hashing what is there), checks the whole file's sha256 against the server's `ETag`, then renames
it to `PATH`. Nothing is ever held in memory whole.

- The part's ETag is kept beside it (`PATH.part.etag`) and sent as `If-Range`: if the file on the server changed,
  the server answers 200 with the whole new file and the download starts over; so does a 206 whose ETag or start
  differs from what was asked.
- A resumed download whose final sha256 does not match (a part corrupted on disk) is thrown away and fetched once
  more from the start; a fresh one that does not match is an error, and nothing is kept.
- An interrupted download leaves the part and its ETag: running the same command again resumes it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from drlora_core.atomic import CHUNK


class DownloadError(Exception):
    """The download could not be completed or did not verify; the message says what to do."""


def part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.etag")


def fetch(http: httpx.Client, path: str, dest: Path, params: dict[str, Any] | None = None, *,
          raise_for: Callable[[httpx.Response], None] | None = None, out: TextIO = sys.stderr) -> str:
    """Download `path` to `dest` (resuming `dest.part`); returns the verified sha256."""
    part, tag_file = part_paths(dest)
    for _ in range(2):
        resumed = part.is_file() and part.stat().st_size > 0
        sha256 = _download(http, path, part, tag_file, params, resumed, raise_for, out)
        if sha256 is not None:
            os.replace(part, dest)
            tag_file.unlink(missing_ok=True)
            return sha256
        print("the partial download did not verify (corrupted on disk?); downloading again from the start",
              file=out)
    raise DownloadError("unreachable")  # pragma: no cover - the second, fresh try either returns or raises


def _download(http: httpx.Client, path: str, part: Path, tag_file: Path, params: dict[str, Any] | None,
              resumed: bool, raise_for: Callable[[httpx.Response], None] | None, out: TextIO) -> str | None:
    """One try; returns the sha256, or None when a resumed part did not verify (it is then removed)."""
    digest = hashlib.sha256()
    have = _hash_into(part, digest) if resumed else 0
    headers = {}
    saved_tag = tag_file.read_text().strip() if resumed and tag_file.is_file() else None
    if resumed:
        headers["Range"] = f"bytes={have}-"
        if saved_tag:
            headers["If-Range"] = saved_tag
    with http.stream("GET", path, params=params, headers=headers) as response:
        if response.status_code == 416 and resumed:
            response.read()
            total = response.headers.get("content-range", "").rpartition("/")[2]
            if total != str(have):  # the part is longer than the file: not a prefix of it
                _discard(part, tag_file)
                return None
            etag = saved_tag or ""
        else:
            if response.status_code >= 400:
                response.read()
                if raise_for is not None:
                    raise_for(response)
                response.raise_for_status()
            if response.status_code not in (200, 206):
                raise DownloadError(f"the server answered {response.status_code} instead of the file")
            etag = response.headers.get("etag", "")
            if response.status_code == 206 and not _continues(response, have, saved_tag, etag):
                response.close()
                _discard(part, tag_file)
                return None
            if response.status_code == 200:
                if resumed:
                    print("the file on the server changed or cannot be resumed; downloading it whole", file=out)
                digest, have = hashlib.sha256(), 0
            tag_file.write_text(etag)
            _stream_to(response, part, digest, append=response.status_code == 206, have=have, out=out)
    expected = etag.strip('"')
    actual = digest.hexdigest()
    if expected and actual != expected:
        _discard(part, tag_file)
        if resumed:
            return None
        raise DownloadError(f"sha256 mismatch: got {actual}, the server says {expected}; nothing kept. Try again")
    return actual


def _continues(response: httpx.Response, have: int, saved_tag: str | None, etag: str) -> bool:
    """A 206 continues our part if it starts where the part ends and is of the same file."""
    start = response.headers.get("content-range", "").removeprefix("bytes ").partition("-")[0]
    return start == str(have) and (saved_tag is None or saved_tag == etag)


def _stream_to(response: httpx.Response, part: Path, digest: Any, *, append: bool, have: int,
               out: TextIO) -> None:
    total = have + int(response.headers.get("content-length", "0") or 0)
    shown = -1
    with open(part, "ab" if append else "wb") as f:
        for chunk in response.iter_bytes(CHUNK):
            f.write(chunk)
            digest.update(chunk)
            have += len(chunk)
            if total and out.isatty() and (tenth := have * 10 // total) != shown:
                shown = tenth
                print(f"\r{have / 1e6:.1f} / {total / 1e6:.1f} MB", end="", file=out, flush=True)
        f.flush()
        os.fsync(f.fileno())
    if shown >= 0:
        print(file=out)


def _hash_into(path: Path, digest: Any) -> int:
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size


def _discard(part: Path, tag_file: Path) -> None:
    part.unlink(missing_ok=True)
    tag_file.unlink(missing_ok=True)
