"""The worker's liveness file and `drlora worker health`: what the compose healthcheck runs while a job trains."""

import os
import time

from drlora_cli.main import main
from worker.alive import alive_path, check_alive, start_touching


def test_a_touching_worker_is_healthy_and_a_stale_one_is_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRLORA_DATA_DIR", str(tmp_path))
    path = alive_path(tmp_path)
    assert main(["worker", "health"]) == 1
    assert "does not exist" in capsys.readouterr().out
    stop = start_touching(path, interval_s=0.05)
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check_alive(path, max_age_s=60)[0]
    assert main(["worker", "health", "--max-age", "60"]) == 0
    stop.set()


def test_an_old_file_fails_the_check(tmp_path):
    path = alive_path(tmp_path, host="gone")
    path.parent.mkdir(parents=True)
    path.touch()
    old = time.time() - 600
    os.utime(path, (old, old))
    healthy, why = check_alive(path, max_age_s=60)
    assert not healthy and "600 s old" in why
