"""`drlora jobs watch` rendering: progress bar, losses and one heatmap line per layer."""

from __future__ import annotations

from drlora_cli.watch import heat_row, progress_bar, render


def test_heat_row_scales_ranks_to_bar_heights() -> None:
    assert heat_row([1, 4, 8, 16], 16) == "▁▂▄█"
    assert heat_row([0, 32], 16) == "▁█"  # clamped, and a zero rank still shows


def test_render_shows_progress_losses_and_each_layer() -> None:
    job = {"id": "ftjob-1", "status": "running", "progress": {"step": 5, "total_steps": 10}, "error": None}
    metrics = [{"step": 4, "train_loss": 2.0, "valid_loss": 2.5, "tokens_per_second": 100.0},
               {"step": 5, "train_loss": 1.5, "valid_loss": None, "tokens_per_second": 120.0}]
    ranks = {"step": 5, "method": "dr_lora", "r_init": 2, "r_target": 4, "r_max": 8, "events": [{}],
             "ranks": [[2, 6], [4, 4]]}
    lines = render(job, metrics, ranks)
    assert lines[0].startswith("ftjob-1  running") and progress_bar(5, 10) in lines[0]
    assert "5/10" in lines[0] and "loss 1.5000" in lines[0] and "valid 2.5000" in lines[0]
    assert lines[2] == "  L0  |▂▆| mean 4.0" and lines[3] == "  L1  |▄▄| mean 4.0"
