"""A generation end to end: an API process and a worker process on PostgreSQL and Redis. A short job trains, a
generation of its final adapter is answered by the worker, and `drlora generate --adapter <job id>` (which downloads
the job's adapter and decodes here) answers the same greedy completions; the API process never loads torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.service import (
    HANG_GUARD_S,
    REPO,
    Api,
    api_and_worker,
    demo_paths,
    dr_lora,
    loads_torch,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]

PROMPTS = ["What is 12 plus 7?", "What is 40 minus 8?"]


@pytest.fixture(scope="module")
def served(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    with api_and_worker(pg_url, redis_url, tmp_path_factory.mktemp("e2e-generations"), "generations-e2e") as served:
        yield served


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
        done = api.wait_done(f"/v1/fine_tuning/jobs/{job_id}/generations/{r.json()['id']}", "the generation")
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 6 and done["chat"] is False
    worker_says = [c["text"] for c in done["completions"]]

    env = {**os.environ, "DRLORA_BASE_URL": url, "DRLORA_API_KEY": key, "DRLORA_CACHE_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "drlora_cli.main", "generate", "--adapter", job_id, "--max-new-tokens", "6",
            "--json", "--device", "cpu", *[a for p in PROMPTS for a in ("--prompt", p)]]
    local = subprocess.run(args, env=env, cwd=REPO, text=True, capture_output=True, timeout=HANG_GUARD_S)
    assert local.returncode == 0, local.stderr
    printed = json.loads(local.stdout)
    assert [c["completion"] for c in printed["completions"]] == worker_says
    assert (tmp_path / "adapters" / job_id / "drlora_ranks.json").is_file()  # cached for the next call
    assert not loads_torch(api_pid)
