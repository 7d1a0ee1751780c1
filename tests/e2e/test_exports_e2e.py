"""An export end to end: an API process and a worker process on PostgreSQL and Redis train a demo-model job, then
`drlora adapter download --dtype bf16 --base-model-name ...` asks for the export, waits while the worker builds it,
and downloads it; the zip's adapter_config.json carries the chosen base model name and its weights are bf16. The
API process never loads torch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
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


@pytest.fixture(scope="module")
def served(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    with api_and_worker(pg_url, redis_url, tmp_path_factory.mktemp("e2e-exports"), "exports-e2e") as served:
        yield served


def bf16_only(weights: bytes) -> bool:
    (length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + length])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


def test_a_worker_builds_a_bf16_export_that_the_cli_downloads(served: tuple[str, str, int], tmp_path: Path) -> None:
    url, key, api_pid = served
    with Api(url, key) as api:
        small = "".join(demo_paths()[1].read_text().splitlines(keepends=True)[:32])
        r = api.http.post("/v1/files", files={"file": ("t.jsonl", small)}, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": r.json()["id"],
                                              "method": dr_lora()})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        api.wait_job(job_id, lambda job: job["status"] in ("succeeded", "failed"), "the job to end")
        finished = api.job(job_id)
        assert finished["status"] == "succeeded", finished["error"]

        # the worker builds it: wait on what it reports; the CLI below then finds it built and downloads it
        export = api.post(f"/v1/fine_tuning/jobs/{job_id}/exports",
                          {"dtype": "bf16", "base_model_name_or_path": "my-org/demo-moe"})
        assert export.status_code == 201, export.text
        built = api.wait_done(f"/v1/fine_tuning/jobs/{job_id}/exports/{export.json()['id']}", "the export")
        assert built["status"] == "succeeded", built["error"]

    env = {**os.environ, "DRLORA_BASE_URL": url, "DRLORA_API_KEY": key}
    dest = tmp_path / "bf16.zip"
    done = subprocess.run([sys.executable, "-m", "drlora_cli.main", "adapter", "download", job_id, "--dtype", "bf16",
                           "--base-model-name", "my-org/demo-moe", "--interval", "0.5", "-o", str(dest)],
                          env=env, cwd=REPO, text=True, capture_output=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": succeeded 100%" in done.stderr and "sha256" in done.stdout
    with zipfile.ZipFile(dest) as zf:
        assert json.loads(zf.read("adapter_config.json"))["base_model_name_or_path"] == "my-org/demo-moe"
        assert bf16_only(zf.read("adapter_model.safetensors"))
        assert "drlora_ranks.json" in zf.namelist()

    with Api(url, key) as api:
        listed = api.get(f"/v1/fine_tuning/jobs/{job_id}/exports").json()["data"]
        assert [(e["status"], e["dtype"], e["base_model_name_or_path"]) for e in listed] == [
            ("succeeded", "bf16", "my-org/demo-moe")]
        again = api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter", dtype="bf16",
                        base_model_name_or_path="my-org/demo-moe")
        assert again.status_code == 200 and again.content == dest.read_bytes()
    assert not loads_torch(api_pid)
