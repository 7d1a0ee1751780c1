"""`drlora export`: a train output directory in, the chosen layout out, and the rank cap's table printed."""

import json

import pytest

from drlora_cli.export_cmd import cap_table
from drlora_cli.main import main
from drlora_core.export import export_peft
from tests.support.engine import adapted

# PEFT's own per-expert conversion adds a rank_pattern for the fused gate_up_proj and then warns that the pattern
# matched no module name (it targets a parameter); the loaded ranks and logits are right (tests below).
pytestmark = pytest.mark.filterwarnings("ignore:The following .*_pattern keys did not match:RuntimeWarning")


def test_export_of_a_run_directory_prints_the_cap_table(tmp_path, capsys):
    _, adapter = adapted("qwen3_moe")
    export_peft(adapter, tmp_path / "run" / "adapter", base_model="q")
    out = tmp_path / "capped"
    code = main(["export", str(tmp_path / "run"), "--out", str(out), "--layout", "per_expert", "--dtype", "bf16",
                 "--max-rank", "4", "--base-model-name", "Qwen/Qwen3-30B-A3B"])
    assert code == 0
    printed = capsys.readouterr().out
    capped = sum(r > 4 for layer in adapter.ranks() for r in layer)
    assert f"rank cap 4: {capped} experts capped" in printed and "max error" in printed
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "Qwen/Qwen3-30B-A3B"
    rows = [line for line in printed.splitlines() if line.strip()[:1].isdigit()]
    errors = [float(line.split()[3]) for line in rows]
    assert errors == sorted(errors, reverse=True) and len(rows) == min(10, capped)


def test_the_table_shows_ten_and_counts_the_rest():
    experts = [{"layer": 0, "expert": e, "original_rank": 8, "errors": {"down_proj": e / 100}} for e in range(13)]
    table = cap_table({"max_rank": 2, "experts": experts})
    assert "0.1200" in table.splitlines()[2] and "... and 3 more" in table


def test_merged_without_a_base_it_can_find_is_an_error_naming_the_flag(tmp_path, capsys):
    _, adapter = adapted("qwen3_moe")
    export_peft(adapter, tmp_path / "adapter", base_model="q")
    assert main(["export", str(tmp_path / "adapter"), "--out", str(tmp_path / "m"), "--layout", "merged"]) == 2
    assert "pass --base-model-dir" in capsys.readouterr().err


def test_a_merge_without_a_base_dir_uses_the_base_the_adapter_was_trained_on(tmp_path):
    from drlora_cli.export_cmd import trained_base
    from drlora_core.assets import DEMO_MODEL_ID, demo_model_dir

    (tmp_path / "drlora_ranks.json").write_text(json.dumps({"base_model": DEMO_MODEL_ID}))
    assert trained_base(tmp_path) == demo_model_dir()
    (tmp_path / "drlora_ranks.json").write_text(json.dumps({"base_model": "/srv/models/gone"}))
    with pytest.raises(FileNotFoundError, match="pass --base-model-dir"):
        trained_base(tmp_path)
