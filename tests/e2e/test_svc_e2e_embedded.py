"""End to end embedded: `drlora serve` (SQLite in WAL mode, the filesystem broker, one worker process) started as a
newcomer would, then the README's curl walk-through and openai-SDK snippet run exactly as written in
docs/service.md, the client commands, and Ctrl-C.

The only change made to the documented commands is the port (the test picks a free one instead of 8000); `HOME`
points at a temporary folder so that `~/.drlora` is fresh.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.service import (
    HANG_GUARD_S,
    REPO,
    STALL_FLOOR_S,
    Api,
    Process,
    demo_paths,
    dr_lora,
    free_port,
    loads_torch,
    start_serve,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HANG_GUARD_S)]

DOC = REPO / "docs" / "service.md"


def doc_block(marker: str) -> str:
    text = DOC.read_text()
    block = text.split(f"<!-- {marker}:start -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    return re.sub(r"^```\w*\n|```\s*$", "", block.strip(), flags=re.M)


@dataclass
class Served:
    home: Path
    url: str
    key: str
    proc: Process

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRLORA_")}
        env.update(HOME=str(self.home), PYTHONUNBUFFERED="1")
        return env

    def workdir(self, name: str) -> Path:
        """A folder like a fresh clone's root for the documented relative paths (drlora_core/assets/...)."""
        path = self.home / name
        path.mkdir()
        (path / "drlora_core").symlink_to(demo_paths()[0].parents[1])
        return path

    def jobs(self) -> list[dict]:
        r = httpx.get(f"{self.url}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {self.key}"}, timeout=10)
        return list(r.json()["data"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(home, port)
    try:
        key = (home / ".drlora" / "api_key").read_text().strip()
        log = proc.output()
        assert url in log and key in log  # the URL and the key are printed on first start
        yield Served(home, url, key, proc)
    finally:
        proc.stop(signal.SIGINT, timeout=90)


def test_curl_walkthrough_works_as_written(served: Served) -> None:
    script = doc_block("walkthrough").replace("127.0.0.1:8000", served.url.removeprefix("http://"))
    cwd = served.workdir("curl")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=served.env(),
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = served.jobs()[0]
    assert job["status"] == "succeeded", job
    assert "data: [DONE]" in result.stdout and '"type":"metrics"' in result.stdout
    digest = hashlib.sha256((cwd / "adapter.zip").read_bytes()).hexdigest()
    assert f"x-content-sha256: {digest}" in result.stdout.lower() and f"{digest}  adapter.zip" in result.stdout

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(demo_paths()[0])
    model = PeftModel.from_pretrained(base, cwd / "adapter")
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape[:2] == (1, 3)


def test_openai_sdk_snippet_works_as_written(served: Served) -> None:
    env = {**served.env(), "DRLORA_BASE_URL": served.url, "DRLORA_API_KEY": served.key}
    result = subprocess.run([sys.executable, "-c", doc_block("sdk")], cwd=served.workdir("sdk"), env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded ft:drlora-demo-moe:sdk:" in result.stdout
    assert "layer 0: [" in result.stdout


def test_client_commands(served: Served, tmp_path: Path) -> None:
    env = {**served.env(), "DRLORA_BASE_URL": served.url}  # the key comes from ~/.drlora/api_key

    def drlora(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "drlora_cli.main", *args], env=env, capture_output=True,
                                text=True, timeout=HANG_GUARD_S)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    import json

    file_id = json.loads(drlora("files", "upload", str(demo_paths()[1])))["id"]
    out = drlora("jobs", "create", "--training-file", file_id, "--set", "max_steps=6", "--set", "batch_size=4",
                 "--set", "r_init=2", "--set", "r_target=4", "--set", "r_max=8", "--set", "growth_interval=2",
                 "--set", "learning_rate=0.001", "--suffix", "cli", "--watch")
    job_id = out.split()[1]  # "created ftjob-... (dr_lora on drlora-demo-moe)", then the watch frame, no JSON
    assert out.startswith("created ftjob-") and "{" not in out
    assert "succeeded" in out and "6/6" in out and "L0   |" in out  # progress, and the rank map
    assert job_id in drlora("jobs", "list")
    assert json.loads(drlora("jobs", "get", job_id, "--json"))["status"] == "succeeded"
    out = drlora("adapter", "download", job_id, "-o", str(tmp_path / "a.zip"), "--extract", str(tmp_path / "a"))
    assert hashlib.sha256((tmp_path / "a.zip").read_bytes()).hexdigest() in out
    assert (tmp_path / "a" / "adapter_config.json").is_file()


def test_events_metrics_ranks_and_checkpoints_are_visible_while_it_runs(served: Served) -> None:
    with Api(served.url, served.key) as api:
        with open(demo_paths()[1], "rb") as f:
            file_id = api.http.post("/v1/files", files={"file": ("train.jsonl", f)}, data={"purpose": "fine-tune"}).json()["id"]
        job_id = api.post("/v1/fine_tuning/jobs", {"model": "drlora-demo-moe", "training_file": file_id,
                                                   "method": dr_lora(max_steps=10, checkpoint_every=2)}).json()["id"]
        running = api.wait_step(job_id, 3)
        assert running["status"] == "running"
        path = f"/v1/fine_tuning/jobs/{job_id}"
        assert any(e["type"] == "metrics" for e in api.get(f"{path}/events", limit=100).json()["data"])
        assert len(api.get(f"{path}/metrics").json()["data"]) >= 3
        assert api.get(f"{path}/ranks").json()["ranks"]
        assert api.get(f"{path}/checkpoints").json()["data"][0]["step_number"] >= 2
        assert api.wait_status(job_id, ("succeeded",))["fine_tuned_model"]


def test_a_dead_worker_is_restarted(served: Served) -> None:
    (first,) = served.proc.children()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: served.proc.children() not in ([], [first]), STALL_FLOOR_S, what="a new worker process")


def test_ctrl_c_stops_serve_and_its_worker(served: Served) -> None:
    children = served.proc.children()
    assert children, "drlora serve should have started a worker process"
    assert not loads_torch(served.proc.pid)  # the API process trained jobs through its worker without torch
    served.proc.send(signal.SIGINT)
    assert served.proc.proc.wait(timeout=90) == 0
    for pid in children:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 30,
                   what=f"worker {pid} to exit")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except OSError:
        return "Z"
