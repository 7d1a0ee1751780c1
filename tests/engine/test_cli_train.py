"""`drlora train`: the demo run with its defaults, and the errors a user sees."""

import json

import pytest

from drlora_cli.main import main
from drlora_cli.train_cmd import rank_summary


@pytest.mark.slow
def test_demo_run_with_defaults_ends_with_a_heterogeneous_budgeted_rank_map(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "drlora-demo-moe", "--out", str(out), "--device", "cpu", "--max-steps", "150"]) == 0
    printed = capsys.readouterr().out
    assert "completed at step 150/150" in printed and "rank map" in printed
    document = json.loads((out / "adapter" / "drlora_ranks.json").read_text())
    assert document["method"] == "dr_lora" and document["events"]
    for layer in document["ranks"]:
        assert sum(layer) == len(layer) * document["r_target"]
        assert max(layer) <= document["r_max"]
    assert any(len(set(layer)) > 1 for layer in document["ranks"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_bad_dataset_line_is_named(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", "completion": 4}\n')
    code = main(["train", "--train", str(bad), "--out", str(tmp_path / "run"), "--max-steps", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "completion" in err


def test_train_needs_data_for_a_non_demo_model(tmp_path, capsys):
    assert main(["train", "--model", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "--train is required" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--out", out, "--max-steps", "4", "--checkpoint-every", "2", "--growth-interval", "1"]
    assert main([*args, "--r-init", "4", "--r-target", "4"]) == 0
    assert main([*args, "--r-init", "4", "--r-target", "4", "--lr", "0.5"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_rank_summary_shades_each_expert():
    text = rank_summary([[4, 16, 8, 8]], 16)
    assert text.splitlines()[1].startswith("  L0  |") and "(min 4, max 16, mean 9.0)" in text


def test_merged_export_matches_the_peft_adapter(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from drlora_core.assets import demo_model_dir

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--max-steps", "3", "--growth-interval", "1", "--lr", "0.05", "--merged"]
    assert main(args) == 0
    ids = torch.tensor([[5, 17, 33, 64, 100, 7, 9, 12]])
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir()), out / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir()).eval()
    with torch.no_grad():
        a, b, c = merged(input_ids=ids).logits, peft(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert not torch.allclose(a, c, atol=1e-4)  # training moved the model


def test_resume_may_change_the_device_only(tmp_path):
    out = str(tmp_path / "run")
    args = ["train", "--out", out, "--max-steps", "4", "--checkpoint-every", "2", "--r-init", "4", "--r-target", "4"]
    assert main([*args, "--device", "cpu"]) == 0
    assert main([*args, "--device", "auto"]) == 0


def test_every_checkpoint_holds_its_peft_adapter(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from drlora_core.adapter import attach
    from drlora_core.assets import demo_model_dir
    from drlora_core.checkpoint import load_checkpoint
    from drlora_core.config import RunConfig

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--max-steps", "6", "--checkpoint-every", "2", "--growth-interval", "1",
            "--lr", "0.05"]
    assert main(args) == 0
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000002", "step-000004"]
    for ckpt in checkpoints:
        trainer = json.loads((ckpt / "trainer.json").read_text())
        document = json.loads((ckpt / "adapter" / "drlora_ranks.json").read_text())
        assert document["ranks"] == trainer["ranks"] and document["steps"] == trainer["step"]
        assert len(document["events"]) == len(trainer["growth_events"])
    # PEFT, loading the step-4 adapter, reproduces our engine holding that checkpoint's banks
    data = load_checkpoint(checkpoints[-1])
    engine_model = AutoModelForCausalLM.from_pretrained(demo_model_dir()).eval()
    adapter = attach(engine_model, RunConfig.from_dict(data.meta["config"]).lora)
    for layer, ranks in enumerate(data.meta["ranks"]):
        adapter.bank(layer).set_ranks(ranks)
    adapter.lora.load_state_dict({k: v for k, v in data.tensors["adapter"].items() if not k.startswith("router.")})
    engine_model.eval()  # the banks' dropout too
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir()),
                                     checkpoints[-1] / "adapter").eval()
    ids = torch.tensor([[5, 17, 33, 64, 100, 7, 9, 12]])
    with torch.no_grad():
        ours, theirs = engine_model(input_ids=ids).logits, peft(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_dir()), out / "adapter").eval()
    with torch.no_grad():
        assert not torch.allclose(final(input_ids=ids).logits, theirs, atol=1e-4)  # two more steps moved it


@pytest.mark.timeout(300)
def test_ctrl_c_writes_a_checkpoint_and_the_rerun_resumes_from_it(tmp_path):
    """Without --checkpoint-every, Ctrl-C (SIGINT) still leaves a checkpoint at the step it stopped; running the
    same command again says where it resumed."""
    import os
    import re
    import signal
    import sys

    from drlora_core.checkpoint import latest_checkpoint
    from tests.support.service import Process, wait_until

    out = tmp_path / "run"
    args = [sys.executable, "-m", "drlora_cli.main", "train", "--out", str(out), "--max-steps", "400",
            "--batch-size", "2", "--max-seq-len", "32", "--r-init", "2", "--r-target", "4", "--r-max", "8",
            "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def interrupted_run(log_name: str, wait_for: str) -> tuple[Process, str]:
        proc = Process(args, env, tmp_path / log_name)
        wait_until(lambda: re.search(wait_for, proc.output()), 240, what=wait_for)
        proc.send(signal.SIGINT)
        try:
            assert proc.proc.wait(timeout=120) == 130, proc.output()
        finally:
            proc.stop()  # it has exited (or is killed): this closes its log
        return proc, proc.output()

    _, first = interrupted_run("first.log", r"\| *[1-9]\d*/400")
    stopped = int(re.search(r"interrupted at step (\d+)/400", first).group(1))
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None and checkpoint.name.endswith(f"{stopped:06d}"), (checkpoint, first)

    _, second = interrupted_run("second.log", rf"resuming from the checkpoint at step {stopped}/400")
    assert f"resuming from the checkpoint at step {stopped}/400" in second
