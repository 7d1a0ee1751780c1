"""The client commands against a real API process on PostgreSQL: `--version`, `files list|delete`, `models list`,
`keys list`, `--json` on the list and get commands, `jobs watch`'s exit codes, and its frame in an 80 x 24 tmux pane.

No worker runs here: the test writes the rows a worker would (status, progress, metrics, rank snapshots) through the
service layer, so the watch view can be driven step by step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from drlora_cli.bootstrap import new_key
from drlora_cli.main import main
from service.db import make_engine, make_sessionmaker
from service.ids import now
from service.settings import Settings
from service.tables import Job, Metric, RankSnapshot
from tests.support.service import REPO, Api, free_port, settings_env, start_api, wait_until

pytestmark = pytest.mark.timeout(240)


class Served:
    def __init__(self, settings: Settings, url: str, key: str) -> None:
        self.settings, self.url, self.key = settings, url, key
        self.api = Api(url, key)
        self.engine = make_engine(settings.sqlalchemy_url)
        self.factory = make_sessionmaker(self.engine)

    def env(self) -> dict[str, str]:
        return {**settings_env(self.settings), "DRLORA_BASE_URL": self.url, "DRLORA_API_KEY": self.key}

    def drlora(self, *args: str, code: int = 0) -> str:
        result = subprocess.run([sys.executable, "-m", "drlora_cli.main", *args], env=self.env(), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == code, result.stdout + result.stderr
        return result.stdout if code == 0 else result.stdout + result.stderr

    def upload(self) -> str:
        r = self.api.http.post("/v1/files", files={"file": ("t.jsonl", b'{"text": "hello"}\n')},
                               data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def new_job(self) -> str:
        r = self.api.post("/v1/fine_tuning/jobs", {"model": "test-model", "training_file": self.upload()})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def set_job(self, job_id: str, **values: Any) -> None:
        with self.factory() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))
            s.commit()

    def add_rows(self, *rows: Any) -> None:
        with self.factory() as s:
            for row in rows:
                s.merge(row)
            s.commit()


@pytest.fixture(scope="module")
def served(pg_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    logs = tmp_path_factory.mktemp("cli-client")
    proc = start_api(pg_settings, port := free_port(), logs / "api.log")
    server = Served(pg_settings, f"http://127.0.0.1:{port}", new_key(pg_settings, f"cli-{port}").key)
    try:
        yield server
    finally:
        proc.stop()
        server.api.http.close()
        server.engine.dispose()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("drlora 0.1")


def test_files_list_and_delete(served: Served) -> None:
    file_id = served.upload()
    assert file_id in served.drlora("files", "list")
    listed = json.loads(served.drlora("files", "list", "--json"))
    assert listed["object"] == "list" and file_id in [f["id"] for f in listed["data"]]
    assert served.drlora("files", "delete", file_id).strip() == f"deleted {file_id}"
    assert file_id not in served.drlora("files", "list")
    assert "HTTP 404" in served.drlora("files", "delete", file_id, code=1)  # refused, exit 1


def test_models_list_and_keys_list(served: Served, fake_model_dir: Path) -> None:
    assert "test-model" in served.drlora("models", "list") and str(fake_model_dir) in served.drlora("models", "list")
    models = json.loads(served.drlora("models", "list", "--json"))
    assert {"id": "test-model", "owned_by": "system", "path": str(fake_model_dir)}.items() <= next(
        m for m in models if m["id"] == "test-model").items()
    keys = json.loads(served.drlora("keys", "list", "--json"))
    mine = [k for k in keys if k["tenant"] == f"cli-{served.url.rsplit(':', 1)[1]}"]
    assert len(mine) == 1 and served.key.startswith(mine[0]["prefix"]) and mine[0]["revoked_at"] is None
    table = served.drlora("keys", "list")
    assert mine[0]["id"] in table and served.key not in table and served.key not in json.dumps(keys)


def test_jobs_list_and_get_as_tables_and_json(served: Served) -> None:
    job_id = served.new_job()
    assert job_id in served.drlora("jobs", "list")
    page = json.loads(served.drlora("jobs", "list", "--json"))
    assert page["object"] == "list" and page["data"][0]["id"] == job_id
    shown = served.drlora("jobs", "get", job_id)
    assert f"id                {job_id}" in shown and "status            queued" in shown
    assert json.loads(served.drlora("jobs", "get", job_id, "--json"))["id"] == job_id
    served.api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")


@pytest.mark.parametrize(("status", "code"), [("succeeded", 0), ("failed", 1), ("cancelled", 2), ("paused", 3)])
def test_watch_exit_codes(served: Served, status: str, code: int) -> None:
    job_id = served.new_job()
    error = {"code": "boom", "message": "it broke", "param": None} if status == "failed" else None
    served.set_job(job_id, status=status, error=error, finished_at=now() if status != "paused" else None)
    out = served.drlora("jobs", "watch", job_id, "--interval", "0.1", code=code)
    assert job_id in out and status in out
    if status == "failed":
        assert "error: it broke" in out


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def test_watch_draws_one_clean_frame_in_an_80_by_24_pane(served: Served, tmp_path: Path) -> None:
    """The frame redraws in place: after many updates the pane, scrollback included, holds exactly one frame, and
    no line is wider than the pane."""
    job_id = served.new_job()
    layers, experts, total = 48, 128, 20
    served.set_job(job_id, status="running", step=0, total_steps=total, estimated_finish=now() + 60)
    served.add_rows(RankSnapshot(job_id=job_id, step=0, ranks=[[8] * experts for _ in range(layers)]))
    session = f"drlora-watch-{job_id[-8:]}"
    done = tmp_path / "exit-code"
    env = " ".join(f"{k}='{v}'" for k, v in served.env().items() if k.startswith(("DRLORA_", "PYTHON", "PATH")))
    command = (f"env {env} {sys.executable} -m drlora_cli.main jobs watch {job_id} --interval 0.2; "
               f"echo $? > {done}; sleep 600")
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", command)
    try:
        wait_until(lambda: job_id in tmux("capture-pane", "-p", "-t", session), 60, what="the first frame")
        for step in range(1, total + 1):
            ranks = [[8 + 8 * ((layer + expert + step) % 4 == 0) for expert in range(experts)]
                     for layer in range(layers)]
            served.add_rows(Metric(job_id=job_id, step=step, train_loss=3 - step / 10, learning_rate=1e-4,
                                   tokens_per_second=1000.0, valid_loss=2.5 if step % 5 == 0 else None,
                                   created_at=now()),
                            RankSnapshot(job_id=job_id, step=step, ranks=ranks))
            served.set_job(job_id, step=step)
            time.sleep(0.15)
        served.set_job(job_id, status="succeeded", finished_at=now())
        wait_until(done.is_file, 60, what="jobs watch to exit")
        assert done.read_text().strip() == "0"
        pane = tmux("capture-pane", "-p", "-J", "-S", "-", "-t", session).rstrip("\n").splitlines()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
    frame = [line.rstrip() for line in pane if line.strip()]
    assert sum(line.startswith(job_id) for line in frame) == 1, "\n".join(pane)
    assert len(frame) <= 24 and max(map(len, frame)) <= 80, "\n".join(pane)
    text = "\n".join(frame)
    assert f"{job_id}  succeeded" in text and f"{total}/{total}" in text and "elapsed" in text
    assert "each glyph = 3 experts; each row = 4 layers" in text and "rank: ." in text
