"""The OLMoE-1B-7B-width model (bench/realshape.py: hidden 2048, 64 experts of width 1024, top-8, vocabulary
50304, 2 layers; 1.05 B parameters) as a job through `drlora serve` (the embedded API and its worker) with
gradient checkpointing on: the job carries its estimate, the worker trains it, `/ranks` shows grown, uneven ranks
that keep each layer's budget, and the downloaded adapter is a PEFT directory holding the same rank map.

Runs under `-m realshape` only (8 GB of RAM, about 10 minutes on 2 busy cores)."""

from __future__ import annotations

import io
import json
import signal
import time
import zipfile
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from bench.realshape import save_olmoe_width, write_long_text
from drlora_cli.bootstrap import register_model
from service.settings import Settings
from tests.support.service import Api, free_port, start_serve, wait_progress

MODEL = "olmoe-width-2l"
HYPERPARAMETERS = {"max_steps": 4, "batch_size": 2, "max_seq_len": 128, "r_init": 8, "r_target": 16, "r_max": 32,
                   "growth_interval": 1, "warmup_ratio": 0.0, "learning_rate": 2e-5, "gradient_checkpointing": True,
                   "checkpoint_every": 0}


@pytest.mark.realshape
@pytest.mark.timeout(3600)
def test_olmoe_width_model_through_the_service(tmp_path: Path) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from safetensors import safe_open

    model_dir = save_olmoe_width(tmp_path / "olmoe-2l")
    data = write_long_text(tmp_path / "train.jsonl", records=16, words=200)
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    proc = start_serve(home, port, DRLORA_DEVICE="cpu")
    try:
        register_model(Settings(data_dir=home / ".drlora"), MODEL, model_dir)
        api = Api(f"http://127.0.0.1:{port}", (home / ".drlora" / "api_key").read_text().strip())
        with api, open(data, "rb") as f:
            file_id = api.http.post("/v1/files", files={"file": ("train.jsonl", f)},
                                    data={"purpose": "fine-tune"}).json()["id"]
            r = api.post("/v1/fine_tuning/jobs", {"model": MODEL, "training_file": file_id,
                                                  "method": {"type": "dr_lora",
                                                             "dr_lora": {"hyperparameters": HYPERPARAMETERS}}})
            assert r.status_code == 200, r.text
            job = r.json()
            assert job["hyperparameters"]["gradient_checkpointing"] is True
            assert job["estimate"]["model_type"] == "olmoe" and job["estimate"]["gradient_checkpointing"] is True
            job = _wait_done(api, job["id"], home / "serve.log")
            assert job["status"] == "succeeded", job["error"]
            assert job["progress"]["step"] == 4

            ranks = api.get(f"/v1/fine_tuning/jobs/{job['id']}/ranks").json()
            layers = ranks["ranks"]
            assert len(layers) == 2 and all(len(layer) == 64 for layer in layers)
            assert all(sum(layer) == 64 * 16 for layer in layers)  # the growth keeps each layer's budget ...
            assert any(len(set(layer)) > 1 for layer in layers)  # ... and spends it unevenly
            assert ranks["events"]  # growth events were recorded

            download = api.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
            assert download.status_code == 200
            adapter = tmp_path / "adapter"
            zipfile.ZipFile(io.BytesIO(download.content)).extractall(adapter)
            config = PeftLoraConfig.from_pretrained(str(adapter))
            assert config.target_parameters or config.target_modules
            with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as st:
                assert any("experts" in key for key in st.keys())  # noqa: SIM118
            assert json.loads((adapter / "drlora_ranks.json").read_text())["ranks"] == layers
    finally:
        proc.stop(signal.SIGINT, timeout=120)


def _wait_done(api: Api, job_id: str, log: Path) -> dict[str, Any]:
    """Wait while the job or the served worker's output (loading a 4 GB model prints progress) keeps changing; the
    API's access log lines, which this polling itself writes, are not progress."""
    def observe() -> tuple[dict[str, Any] | None, Hashable, int]:
        job = api.job(job_id)
        done = job["status"] in ("succeeded", "failed", "cancelled")
        worker_lines = sum(1 for line in log.read_text(errors="replace").splitlines() if '"GET /v1/' not in line)
        return (job if done else None), (job["status"], job["progress"]["step"], worker_lines), \
            int(job["progress"]["step"])

    started = time.monotonic()
    job = wait_progress(observe, api.pace, f"{job_id} to finish", interval=1.0)
    print(f"the real-shape job took {time.monotonic() - started:.0f} s through the service")
    return job
