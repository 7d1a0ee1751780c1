"""`drlora train` at real widths on this machine, and its measured peak RSS against `drlora estimate --json`.

The demo model runs with the slow tests. The OLMoE-1B-7B-width model (hidden 2048, 64 experts of width 1024,
top-8, vocabulary 50304; 2 layers instead of 16: 1.05 B parameters, 4.2 GB in fp32) runs under `-m realshape`
(docs/benchmarks.md has its figures)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.realshape import save_olmoe_width, write_long_text

TOLERANCE = 0.25


def _estimate(model: str, flags: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "drlora_cli.main", "estimate", "--model", model, "--device", "cpu",
                          "--json", *flags], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def _train_peak_rss(model: str, out_dir: Path, flags: list[str]) -> tuple[int, str]:
    """Peak RSS of a `drlora train` child, measured by a fresh Python so no other child counts."""
    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "sys.stdout.write(p.stdout + p.stderr[-3000:]); "
              "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, p.returncode)")
    cmd = [sys.executable, "-c", script, sys.executable, "-m", "drlora_cli.main", "train", "--model", model,
           "--out", str(out_dir), "--device", "cpu", "--no-resume", "--gradient-checkpointing", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
    peak_line = next(line for line in out.splitlines() if line.startswith("PEAK"))
    _, peak, code = peak_line.split()
    assert code == "0", out[-3000:]
    return int(peak), out


def _assert_close(measured: int, estimated: dict) -> None:
    error = estimated["peak_bytes"] / measured - 1
    assert abs(error) <= TOLERANCE, f"estimate {estimated['peak_bytes']} vs measured {measured} ({error:+.1%})"


@pytest.mark.slow
def test_demo_run_peak_rss_matches_the_estimate(tmp_path):
    shape = ["--batch-size", "8", "--max-seq-len", "64"]
    peak, out = _train_peak_rss("drlora-demo-moe", tmp_path / "run", [*shape, "--max-steps", "6",
                                                                      "--growth-interval", "2"])
    assert "completed at step 6/6" in out
    _assert_close(peak, _estimate("drlora-demo-moe", [*shape, "--r-max", "16", "--gradient-checkpointing"]))


@pytest.mark.realshape
@pytest.mark.timeout(3600)
def test_olmoe_width_model_trains_exports_and_matches_the_estimate(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from safetensors import safe_open

    model_dir = save_olmoe_width(tmp_path / "olmoe-2l")
    data = write_long_text(tmp_path / "train.jsonl", records=16, words=200)
    shape = ["--batch-size", "2", "--max-seq-len", "128"]
    ranks = ["--r-init", "8", "--r-target", "16", "--r-max", "32"]
    peak, out = _train_peak_rss(str(model_dir), tmp_path / "run", [*shape, *ranks, "--train", str(data),
                                                                   "--max-steps", "4", "--growth-interval", "1"])
    assert "completed at step 4/4" in out
    ranks_json = json.loads((tmp_path / "run" / "adapter" / "drlora_ranks.json").read_text())
    layer_ranks = ranks_json["ranks"]
    assert len(layer_ranks) == 2 and all(sum(layer) == 64 * 16 for layer in layer_ranks)
    assert any(len(set(layer)) > 1 for layer in layer_ranks)
    adapter = tmp_path / "run" / "adapter"
    config = PeftLoraConfig.from_pretrained(str(adapter))
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert any("experts" in key for key in f.keys())  # noqa: SIM118
    assert config.target_parameters or config.target_modules
    _assert_close(peak, _estimate(str(model_dir), [*shape, "--r-max", "32", "--gradient-checkpointing"]))
