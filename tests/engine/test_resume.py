"""Resuming at step N/2 gives the same run as not stopping: adapter, ranks, EMAs, optimizer, RNG, data position."""

import json
from pathlib import Path

import pytest
import torch

from drlora_core import checkpoint as ckpt
from drlora_core.adapter import attach
from drlora_core.callbacks import Hooks
from drlora_core.data import BatchStream
from drlora_core.export import RANKS_FILE
from drlora_core.tiny import build_tiny
from drlora_core.trainer import train
from tests.support.engine import random_examples, run_config


def _session(family: str, out: Path, pause_at: int, resume: bool):
    model = build_tiny(family)
    config = run_config("dr_lora", 12)
    adapter = attach(model, config.lora)
    data = ckpt.load_checkpoint(ckpt.latest_checkpoint(out)) if resume else None
    pause = Hooks(stop=lambda step: "pause" if step == pause_at else None)
    return train(model, adapter, BatchStream(random_examples(), 4, 0, 0), [], config, out, base_model=family,
                 callbacks=[pause], resume=data)


@pytest.mark.parametrize("family", ["qwen3_moe", "module_list"])
def test_resume_is_bitwise_equal_to_an_uninterrupted_run(family, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _session(family, straight, pause_at=10, resume=False)
    first = _session(family, split, pause_at=5, resume=False)
    assert first.step == 5 and first.stopped == "pause"
    second = _session(family, split, pause_at=10, resume=True)
    assert second.step == 10
    a = ckpt.load_checkpoint(ckpt.checkpoint_dir(straight) / "step-000010")
    b = ckpt.load_checkpoint(ckpt.checkpoint_dir(split) / "step-000010")
    assert a.tensors.keys() == b.tensors.keys()
    for stem in a.tensors:
        assert a.tensors[stem].keys() == b.tensors[stem].keys()
        for key, value in a.tensors[stem].items():
            assert torch.equal(value, b.tensors[stem][key]), f"{stem}/{key} differs after resume"
    for key in ("step", "epoch", "index", "ranks", "growth_events", "scheduler", "optimizer", "trained_tokens"):
        assert a.meta[key] == b.meta[key], key
    assert a.meta["growth_events"], "the window must include growth events"


def test_partial_checkpoint_is_ignored_and_removed(tmp_path):
    out = tmp_path
    _session("qwen3_moe", out, pause_at=5, resume=False)
    root = ckpt.checkpoint_dir(out)
    torn = root / "step-000009"
    torn.mkdir()
    (torn / "adapter.safetensors").write_bytes(b"torn")
    (root / ".step-000011.tmp").mkdir()
    assert ckpt.latest_checkpoint(out) == root / "step-000005"
    assert not torn.exists() and not (root / ".step-000011.tmp").exists()


def test_checkpoints_hold_no_pickle(tmp_path):
    out = tmp_path
    _session("qwen3_moe", out, pause_at=4, resume=False)
    folder = ckpt.checkpoint_dir(out) / "step-000004"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["COMPLETE", "adapter", "adapter.safetensors", "optimizer.safetensors", "signals.safetensors",
                     "trainer.json"]
    assert sorted(p.name for p in (folder / ckpt.ADAPTER_DIR).iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", RANKS_FILE]


def test_a_checkpoint_whose_adapter_fails_is_never_complete(tmp_path):
    """The adapter/ is part of the checkpoint: written before the marker, so a failure leaves no checkpoint."""

    def fail(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 3, ckpt.CheckpointData({"adapter": {"x": torch.zeros(1)}}, {}), fail)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_a_resumed_checkpoints_adapter_holds_the_whole_growth_history(tmp_path):
    _session("qwen3_moe", tmp_path, pause_at=5, resume=False)
    _session("qwen3_moe", tmp_path, pause_at=10, resume=True)
    folder = ckpt.checkpoint_dir(tmp_path) / "step-000010"
    history = json.loads((folder / "trainer.json").read_text())["growth_events"]
    document = json.loads((folder / ckpt.ADAPTER_DIR / RANKS_FILE).read_text())
    assert any(e["step"] <= 5 for e in history) and any(e["step"] > 5 for e in history)
    assert document["events"] == history and document["steps"] == 10
    assert document["base_model"] == "qwen3_moe"
