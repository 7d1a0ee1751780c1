"""The run configuration through the API: defaults agree everywhere, "auto" resolves at create, the job row keeps the
config the worker rebuilds, and `/ranks` reports the ranks the engine really reserves."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from drlora_cli.bootstrap import register_model
from drlora_core.assets import demo_model_dir, demo_train_file
from drlora_core.config import RunConfig
from service.db import make_engine, make_sessionmaker
from service.settings import Settings
from service.tables import Job

pytestmark = pytest.mark.timeout(120)
DEMO = "drlora-demo-moe"


@pytest.fixture(scope="module")
def client(pg_settings: Settings) -> Iterator[TestClient]:
    register_model(pg_settings, DEMO, demo_model_dir())
    with TestClient(create_app(pg_settings, sweep=False)) as c:
        yield c


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload_demo(client: TestClient, key: str) -> str:
    r = client.post("/v1/files", headers=_auth(key), data={"purpose": "fine-tune"},
                    files={"file": ("train.jsonl", demo_train_file().read_bytes())})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _stored_config(settings: Settings, job_id: str) -> RunConfig:
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            return RunConfig.from_dict(session.get_one(Job, job_id).run_config or {})
    finally:
        engine.dispose()


def _help_defaults() -> dict[str, str]:
    from drlora_cli.main import main

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    blocks: dict[str, str] = {}
    flag = ""
    for line in out.getvalue().partition("options:")[2].splitlines():
        if start := re.match(r"\s{2}(?:-\w, )?--([a-z-]+)", line):
            flag = start.group(1)
        blocks[flag] = blocks.get(flag, "") + " " + line.strip()  # argparse wraps an option's help over lines
    return {flag: found.group(1) for flag, text in blocks.items() if (found := re.search(r"\(default: ([^)]*)\)", text))}


def test_drlora_train_help_openapi_and_runconfig_agree(client: TestClient) -> None:
    lora, train = RunConfig().lora, RunConfig().train
    engine = {"method": lora.method, "r-init": lora.r_init, "r-target": lora.r_target, "r-max": lora.r_max,
              "growth-interval": lora.growth_interval, "epochs": train.epochs, "batch-size": train.batch_size,
              "lr": train.lr, "max-steps": train.max_steps, "max-seq-len": train.max_seq_len,
              "dtype": train.dtype, "gradient-checkpointing": train.gradient_checkpointing,
              "growth-end-ratio": lora.growth_end_ratio, "saliency-signal": lora.saliency_signal,
              "per-slice-adam-steps": lora.per_slice_adam_steps, "static-profile": lora.static_profile,
              "train-router": train.train_router, "router-aux-loss-coef": train.router_aux_loss_coef}
    cli = _help_defaults()
    assert {flag: cli.get(flag) for flag in engine} == {flag: str(value) for flag, value in engine.items()}
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    api = {name: spec.get("default") for name, spec in schemas["DrLoraHyperparameters"]["properties"].items()}
    as_api = {"r_init": lora.r_init, "r_target": lora.r_target, "r_max": lora.r_max,
              "growth_interval": lora.growth_interval, "n_epochs": train.epochs, "batch_size": train.batch_size,
              "learning_rate": train.lr, "max_steps": train.max_steps, "max_seq_len": train.max_seq_len,
              "dtype": train.dtype, "gradient_checkpointing": train.gradient_checkpointing,
              "grow_frac": lora.grow_frac, "beta_f": lora.beta_f, "beta_g": lora.beta_g, "gamma": lora.gamma,
              "dropout": lora.dropout, "warmup_ratio": train.warmup_ratio, "weight_decay": train.weight_decay,
              "grad_accum": train.grad_accum, "eval_every": train.eval_every, "train_router": train.train_router,
              "router_aux_loss_coef": train.router_aux_loss_coef, "growth_end_ratio": lora.growth_end_ratio,
              "saliency_signal": lora.saliency_signal, "per_slice_adam_steps": lora.per_slice_adam_steps}
    assert {name: api[name] for name in as_api} == as_api


def test_a_bare_create_on_the_demo_resolves_every_auto_for_a_tiny_model(client: TestClient, make_key,
                                                                        pg_settings: Settings) -> None:
    key = make_key()
    file_id = _upload_demo(client, key)
    r = client.post("/v1/fine_tuning/jobs", headers=_auth(key), json={"model": DEMO, "training_file": file_id})
    assert r.status_code == 200, r.text
    job = r.json()
    hp = job["hyperparameters"]
    assert (hp["r_init"], hp["r_target"], hp["r_max"], hp["learning_rate"]) == (2, 4, 8, 1e-3)
    assert (hp["n_epochs"], hp["batch_size"], hp["gradient_checkpointing"]) == (3, 4, False)
    assert isinstance(hp["growth_interval"], int) and hp["growth_interval"] > 1
    stored = _stored_config(pg_settings, job["id"])
    assert stored.unresolved() == [] and stored.train.seed == job["seed"]
    assert stored.lora.interval == hp["growth_interval"] and stored.train.lr == hp["learning_rate"]


def test_create_refuses_rank_rules_naming_the_parameter(client: TestClient, make_key) -> None:
    key = make_key()
    file_id = _upload_demo(client, key)
    body = {"model": DEMO, "training_file": file_id,
            "method": {"type": "static", "static": {"hyperparameters": {"r_target": 12, "r_max": 8}}}}
    r = client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "method.static.hyperparameters.r_max" and "raise r_max to 16" in error["message"]


def test_a_lora_job_reports_the_r_max_its_adapter_holds(client: TestClient, make_key, pg_settings: Settings,
                                                        tmp_path: Path) -> None:
    """r_target 12: the engine reserves 16 (the next multiple of RANK_MULTIPLE); /ranks said 12."""
    key = make_key()
    file_id = _upload_demo(client, key)
    body = {"model": DEMO, "training_file": file_id,
            "method": {"type": "lora", "lora": {"hyperparameters": {"r_target": 12}}}}
    job = client.post("/v1/fine_tuning/jobs", headers=_auth(key), json=body).json()
    ranks = client.get(f"/v1/fine_tuning/jobs/{job['id']}/ranks", headers=_auth(key)).json()
    assert (ranks["r_init"], ranks["r_target"], ranks["r_max"]) == (12, 12, 16)

    import torch

    from drlora_core.adapter import attach
    from drlora_core.export import RANKS_FILE, export_peft
    from drlora_core.run import load_base

    config = _stored_config(pg_settings, job["id"])  # what the worker rebuilds and trains with
    model, _, _ = load_base(DEMO, torch.device("cpu"))
    adapter = attach(model, config.lora)
    out = export_peft(adapter, tmp_path / "adapter", base_model=DEMO)
    document = json.loads((out / RANKS_FILE).read_text())
    assert document["r_max"] == ranks["r_max"]
    assert {r for layer in document["ranks"] for r in layer} == {ranks["r_target"]}
