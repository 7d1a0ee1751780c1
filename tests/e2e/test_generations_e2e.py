"""A generation end to end: an API process and a worker process on PostgreSQL and Redis. A short job trains, a
generation of its final adapter is answered by the worker, and `drlora generate --adapter <job id>` (which downloads
the job's adapter and decodes here) answers the same greedy completions; the API process never loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drlora_cli.bootstrap import migrate, new_key, register_model
from tests.support.service import (
    HANG_GUARD_S,
    REPO,
    STALL_FLOOR_S,
    Api,
    demo_paths,
    dr_lora,
    free_port,
    loads_torch,
    make_settings,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]

PROMPTS = ["What is 12 plus 7?", "What is 40 minus 8?"]


@pytest.fixture(scope="module")
def served(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    data = tmp_path_factory.mktemp("e2e-generations")
    settings = make_settings(data, pg_url, redis_url, task_queue=f"drlora-e2e-{data.name}")
    migrate(settings)
    register_model(settings, "drlora-demo-moe", demo_paths()[0])
    port = free_port()
    api = start_api(settings, port, data / "api.log")
    worker = start_worker(settings, data / "worker.log")
    try:
        yield f"http://127.0.0.1:{port}", new_key(settings, "generations-e2e").key, api.pid
    finally:
        worker.stop()
        api.stop()


def wait_generation(api: Api, job_id: str, generation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + STALL_FLOOR_S * 2
    while time.monotonic() < deadline:
        got = api.get(f"/v1/fine_tuning/jobs/{job_id}/generations/{generation_id}").json()
        if got["status"] not in ("queued", "running"):
            return dict(got)
        time.sleep(0.5)
    raise AssertionError(f"generation {generation_id} still {got['status']} after {STALL_FLOOR_S * 2:.0f} s")


def test_the_worker_answers_a_generation_as_the_cli_does_locally(
        served: tuple[str, str, int], tmp_path: Path) -> None:
    url, key, api_pid = served
    with Api(url, key) as api:
        data = "".join(demo_paths()[1].read_text().splitlines(keepends=True)[:40])
        r = api.http.post("/v1/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": r.json()["id"],
                                              "method": dr_lora()})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        early = api.post(f"/v1/fine_tuning/jobs/{job_id}/generations", {"prompts": PROMPTS})
        assert early.status_code in (201, 409)  # 409 until the job succeeded (no checkpoint named)
        api.wait_status(job_id, ("succeeded",))

        r = api.post(f"/v1/fine_tuning/jobs/{job_id}/generations", {"prompts": PROMPTS, "max_new_tokens": 6})
        assert r.status_code == 201, r.text
        done = wait_generation(api, job_id, r.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 6 and done["chat"] is False
    worker_says = [c["text"] for c in done["completions"]]

    env = {**os.environ, "DRLORA_BASE_URL": url, "DRLORA_API_KEY": key, "DRLORA_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "drlora_cli.main", "generate", "--adapter", job_id, "--max-new-tokens", "6",
            "--json", "--device", "cpu", *[a for p in PROMPTS for a in ("--prompt", p)]]
    local = subprocess.run(args, env=env, cwd=REPO, text=True, capture_output=True, timeout=STALL_FLOOR_S)
    assert local.returncode == 0, local.stderr
    printed = json.loads(local.stdout)
    assert [c["completion"] for c in printed["completions"]] == worker_says
    assert (tmp_path / "adapters" / job_id / "drlora_ranks.json").is_file()  # cached for the next call
    assert not loads_torch(api_pid)
