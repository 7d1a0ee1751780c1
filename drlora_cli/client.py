"""A small HTTP client for the service, configured by `DRLORA_BASE_URL` and `DRLORA_API_KEY`.

Without `DRLORA_API_KEY` it falls back to the key `drlora serve` wrote to `$DRLORA_DATA_DIR/api_key`
(`~/.drlora/api_key`), so the embedded setup works with no variables at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def api_key() -> str:
    key = os.environ.get("DRLORA_API_KEY", "").strip()
    if key:
        return key
    key_file = Path(os.environ.get("DRLORA_DATA_DIR", str(Path.home() / ".drlora"))) / "api_key"
    if key_file.is_file():
        return key_file.read_text().strip()
    raise SystemExit("set DRLORA_API_KEY (drlora serve prints it and writes it to <data dir>/api_key)")


def base_url() -> str:
    return os.environ.get("DRLORA_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 60.0) -> None:
        self.http = httpx.Client(base_url=(url or base_url()) + "/v1", timeout=timeout,
                                 headers={"Authorization": f"Bearer {key or api_key()}"})

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", path, json=json, headers=headers)

    def upload(self, path: Path, purpose: str) -> Any:
        with open(path, "rb") as f:
            return self.request("POST", "/files", files={"file": (path.name, f, "application/jsonl")},
                                data={"purpose": purpose})

    def download(self, path: str, dest: Path, **params: Any) -> httpx.Headers:
        with self.http.stream("GET", path, params={k: v for k, v in params.items() if v is not None}) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            with open(dest, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            return response.headers


def download_adapter(client: Client, job_id: str, dest: Path, checkpoint: str | None = None) -> str:
    """Download a job's adapter zip (or a checkpoint's) to `dest` and check it against the sha256 the server sends;
    returns the sha256. A mismatch keeps nothing and exits."""
    headers = client.download(f"/fine_tuning/jobs/{job_id}/adapter", dest, checkpoint=checkpoint)
    expected = headers.get("x-content-sha256", "")
    actual = hashlib.sha256(dest.read_bytes()).hexdigest()
    if expected and actual != expected:
        dest.unlink()
        raise SystemExit(f"sha256 mismatch: got {actual}, the server says {expected}; nothing kept")
    return actual


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        message = error["message"] + (f" (line {error['line']})" if error.get("line") else "")
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    raise ClientError(response.status_code, message)
