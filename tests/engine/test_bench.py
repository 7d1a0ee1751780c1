"""The benchmarks: the quick speed run's ratio gates on three families, and the shape of the JSON they write."""

from __future__ import annotations

import json

import pytest

from bench.speed import GATES, SpeedSettings, run_speed

REQUIRED_RATIOS = ("dr_lora_over_lora", "dr_lora_growing_over_frozen", "dr_lora_over_peft",
                   "flops_dr_lora_over_lora_rmax")
VARIANT_KEYS = ("variant", "experts_impl", "median_ms", "p25_ms", "p75_ms", "tokens_per_s", "executed_flops",
                "analytic_flops")


@pytest.fixture(scope="module")
def quick_result() -> dict:
    # run_speed retries a model once when the timing gate fails: the one retry CI allows
    return run_speed(SpeedSettings(quick=True, families=("qwen3_moe", "olmoe", "gpt_oss"), threads=1))


@pytest.mark.slow  # a benchmark run (tens of seconds on 2 cores); CI runs it
def test_quick_speed_meets_the_ratio_gates_on_three_families(quick_result: dict, capsys) -> None:
    for model in quick_result["models"]:
        r = model["ratios"]
        with capsys.disabled():  # CI shows the ratio to PEFT on every run, pass or fail
            print(f"\n{model['model']}: dr_lora/peft {r['dr_lora_over_peft']:.3f}, dr_lora/lora "
                  f"{r['dr_lora_over_lora']:.3f}, growing/frozen {r['dr_lora_growing_over_frozen']:.3f}, "
                  f"FLOPs dr_lora/lora@r_max {r['flops_dr_lora_over_lora_rmax']:.4f}")
        assert r["flops_dr_lora_over_lora_rmax"] <= GATES["flops_dr_lora_over_lora_rmax"], model["model"]
        assert r["dr_lora_over_lora"] <= GATES["dr_lora_over_lora"], model["model"]
    assert len(quick_result["models"]) >= 3
    assert quick_result["failed_gates"] == []


@pytest.mark.slow  # a benchmark run (tens of seconds on 2 cores); CI runs it
def test_speed_json_holds_every_figure(quick_result: dict, tmp_path) -> None:
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(quick_result, default=str))
    loaded = json.loads(path.read_text())
    assert set(REQUIRED_RATIOS) <= set(loaded["ratios"])
    assert loaded["environment"]["device"] and loaded["environment"]["versions"]["torch"]
    for model in loaded["models"]:
        assert set(REQUIRED_RATIOS) <= set(model["ratios"])
        names = [v["variant"] for v in model["variants"]]
        assert names == ["base", "dr_lora", "dr_lora+growth", "lora@8", "lora@16", "peft@8"]
        for v in model["variants"]:
            assert all(v[k] is not None for k in VARIANT_KEYS), v
        assert model["growth_events"] >= 1


@pytest.mark.slow  # a benchmark run (tens of seconds on 2 cores); CI runs it
def test_dr_lora_executes_the_flops_of_lora_at_its_compute_rank(quick_result: dict) -> None:
    """The engine computes at the largest active rank rounded to 8 (16 here): exactly lora@16's matmuls, and the
    analytic count tracks the executed difference between ranks."""
    for model in quick_result["models"]:
        by = {v["variant"]: v for v in model["variants"]}
        assert by["dr_lora"]["executed_flops"] == by["lora@16"]["executed_flops"]
        executed = by["lora@16"]["executed_flops"] - by["lora@8"]["executed_flops"]
        analytic = by["lora@16"]["analytic_flops"] - by["lora@8"]["analytic_flops"]
        assert executed == analytic, model["model"]


@pytest.mark.slow  # a benchmark run (tens of seconds on 2 cores); CI runs it
def test_bench_speed_cli_writes_markdown_and_json(tmp_path, capsys) -> None:
    from drlora_cli.main import main

    out = tmp_path / "speed.json"
    code = main(["bench", "speed", "--quick", "--families", "qwen3_moe", "--rounds", "3", "--warmup", "1",
                 "--growth-every", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| dr_lora |" in printed and "peft@8" in printed
    assert set(REQUIRED_RATIOS) <= set(json.loads(out.read_text())["ratios"])


def _demo_assets_ready() -> bool:
    from drlora_core.assets import demo_model_dir, demo_val_file

    return (demo_model_dir() / "config.json").is_file() and demo_val_file().is_file()


@pytest.mark.skipif(not _demo_assets_ready(), reason="the demo model is not built")
def test_cached_greedy_decoding_matches_decoding_without_cache() -> None:
    import torch

    from bench.decode import greedy_completions
    from drlora_core.assets import DEMO_MODEL_ID
    from drlora_core.run import load_base

    model, tokenizer, _ = load_base(DEMO_MODEL_ID, torch.device("cpu"))
    prompts = ["What is 12 plus 7?\nAnswer:", "What is 99 minus 3?\nAnswer:", "What is 5 plus 60?\nAnswer:"]
    cached = greedy_completions(model, tokenizer, prompts, max_new_tokens=6, use_cache=True)
    plain = greedy_completions(model, tokenizer, prompts, max_new_tokens=6, use_cache=False)
    assert cached == plain


@pytest.mark.timeout(900)
@pytest.mark.skipif(not _demo_assets_ready(), reason="the demo model is not built")
@pytest.mark.slow  # a benchmark run (tens of seconds on 2 cores); CI runs it
def test_quality_harness_runs_and_writes_per_seed_scores_and_paired_intervals(tmp_path) -> None:
    from dataclasses import replace

    from bench.quality import QualitySettings, run_quality
    from bench.report import quality_markdown

    arms = ("static", "dr_lora")  # `drlora bench quality --quick` runs every arm; two keep this test short
    settings = replace(QualitySettings.quick(tmp_path), arms=arms, steps=3, eval_limit=2)
    result = json.loads(json.dumps(run_quality(settings), default=str))
    assert sorted((r["arm"], r["seed"]) for r in result["runs"]) == sorted((a, s) for a in arms for s in (0, 1))
    for run in result["runs"]:
        assert 0.0 <= run["b"] <= 1.0 and 0.0 <= run["a"] <= 1.0
        for layer in run["ranks"]:
            assert sum(layer) == len(layer) * settings.r_target
    primary = result["comparisons"]["primary"]
    assert (primary["a"], primary["b"], primary["metric"]) == ("dr_lora", "static", "b")
    assert primary["low"] <= primary["mean"] <= primary["high"] and len(primary["diffs"]) == 2
    assert 0.0 < result["routing"]["b_token_share"] < 0.5
    assert "**Primary (fixed before running)" in quality_markdown(result)
    assert (tmp_path / "rank_heatmaps.png").is_file()
    again = run_quality(settings)  # a rerun continues from runs.jsonl: nothing left to train
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in result["runs"]]
