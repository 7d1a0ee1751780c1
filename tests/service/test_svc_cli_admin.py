"""The production admin commands as Docker Compose runs them: `drlora db upgrade`, `keys create`, `models add`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from drlora_cli.main import build_parser
from drlora_core.assets import demo_model_dir
from service.settings import Settings
from tests.support.service import REPO, settings_env

pytestmark = pytest.mark.timeout(120)


def drlora(settings: Settings, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "drlora_cli.main", *args], env=settings_env(settings), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_db_upgrade_keys_create_and_models_add(pg_settings: Settings, fake_model_dir: Path) -> None:
    assert "latest migration" in drlora(pg_settings, "db", "upgrade")  # idempotent on a migrated database
    out = drlora(pg_settings, "keys", "create", "--tenant", "admin-cli")
    key = out.strip().splitlines()[-1]
    assert key.startswith("drl-") and "key id key-" in out
    refused = subprocess.run([sys.executable, "-m", "drlora_cli.main", "models", "add", "not-moe", str(fake_model_dir)],
                             env=settings_env(pg_settings), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no MoE layer drlora supports" in refused.stderr  # nothing to train
    drlora(pg_settings, "models", "add", "cli-model", str(demo_model_dir()), "--owned-by", "ops")
    with TestClient(create_app(pg_settings, sweep=False)) as client:
        model = client.get("/v1/models/cli-model", headers={"Authorization": f"Bearer {key}"}).json()
    assert model["id"] == "cli-model" and model["owned_by"] == "ops"


def test_command_names_are_pinned() -> None:
    parser = build_parser()
    for argv in (["serve", "--host", "0.0.0.0", "--port", "9000", "--data-dir", "/tmp/x"], ["api"], ["worker"],
                 ["db", "upgrade"], ["keys", "create", "--tenant", "t"], ["models", "add", "m", "/tmp"],
                 ["files", "upload", "f.jsonl"], ["jobs", "create", "--training-file", "file-1"], ["jobs", "list"],
                 ["jobs", "get", "j"], ["jobs", "cancel", "j"], ["jobs", "pause", "j"], ["jobs", "resume", "j"],
                 ["jobs", "watch", "j"], ["adapter", "download", "j"], ["estimate", "--json"], ["worker", "health"]):
        assert callable(parser.parse_args(argv).handler), argv
