"""A routing profile end to end: an API process and a worker process on PostgreSQL and Redis, driven by the
`drlora profiles` command; the profile of the demo data agrees with the routing a job on the same data records at
its first step, through the API."""

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
    STALL_FLOOR_S,
    Api,
    api_and_worker,
    demo_paths,
    loads_torch,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]


@pytest.fixture(scope="module")
def served(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, int]]:
    with api_and_worker(pg_url, redis_url, tmp_path_factory.mktemp("e2e-profiles"), "profiles-e2e") as served:
        yield served


def drlora(url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DRLORA_BASE_URL": url, "DRLORA_API_KEY": key, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "drlora_cli.main", *args], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=STALL_FLOOR_S * 2)


def test_profile_with_the_cli_then_a_job_on_the_same_data_routes_the_same(
        served: tuple[str, str, int], tmp_path: Path) -> None:
    url, key, api_pid = served
    small = tmp_path / "train.jsonl"
    small.write_text("".join(demo_paths()[1].read_text().splitlines(keepends=True)[:32]))
    uploaded = drlora(url, key, "files", "upload", str(small))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = json.loads(uploaded.stdout)["id"]

    created = drlora(url, key, "profiles", "create", "--file", file_id, "--max-examples", "8", "--batch-size", "8",
                     "--max-seq-len", "64", "--seed", "5", "--r-init", "2", "--r-target", "4", "--r-max", "8",
                     "--wait", "--json")
    assert created.returncode == 0, created.stderr + created.stdout
    profile = json.loads(created.stdout)
    assert profile["status"] == "succeeded", profile["error"]
    assert all(abs(sum(row) - 1) < 1e-9 for row in profile["frequency"])

    shown = drlora(url, key, "profiles", "get", profile["id"])
    assert shown.returncode == 0, shown.stderr
    assert "routing share per layer x expert" in shown.stdout and "static would allocate" in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())

    with Api(url, key) as api:
        r = api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": file_id, "seed": 5,
                                              "method": {"type": "lora", "lora": {"hyperparameters": {
                                                  "max_steps": 1, "batch_size": 8, "max_seq_len": 64,
                                                  "r_target": 4, "checkpoint_every": 0}}}})
        assert r.status_code == 200, r.text
        api.wait_status(r.json()["id"], ("succeeded",))
        experts = api.get(f"/v1/fine_tuning/jobs/{r.json()['id']}/experts").json()
    assert experts["step"] == 1
    for mine, theirs in zip(profile["frequency"], experts["frequency"], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)
    assert not loads_torch(api_pid)
