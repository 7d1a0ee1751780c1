"""`drlora jobs watch` and `drlora train` share one rank-map rendering (drlora_cli.render); the watch frame fits the
terminal it is drawn in, at the demo's 4 x 16 and at Qwen3-30B-A3B's 48 x 128."""

from __future__ import annotations

import io
import random

from rich.console import Console

from drlora_cli.render import SHADES, fold, glyph, legend, rank_lines, rank_summary, sparkline
from drlora_cli.watch import frame

NOW = 1_000_000.0


def job(status: str = "running", step: int = 60, total: int = 90) -> dict:
    return {"id": "ftjob-0123456789abcdef01234567", "status": status, "model": "qwen3-30b-a3b",
            "method": {"type": "dr_lora"}, "created_at": NOW - 100, "finished_at": None,
            "estimated_finish": NOW + 50, "progress": {"step": step, "total_steps": total}, "error": None}


def metrics(steps: int) -> list[dict]:
    return [{"step": s, "train_loss": 3 - s / 40, "valid_loss": 2.9 - s / 50 if s % 10 == 0 else None,
             "learning_rate": 1e-4, "tokens_per_second": 12345.6} for s in range(1, steps + 1)]


def ranks(layers: int, experts: int, r_max: int = 32) -> dict:
    rng = random.Random(0)
    return {"step": 60, "r_init": 8, "r_target": 16, "r_max": r_max, "events": [{}] * 40,
            "ranks": [[rng.choice([8, 8, 8, 16, 24, 32]) for _ in range(experts)] for _ in range(layers)]}


def drawn(width: int, height: int, rank_map: dict) -> list[str]:
    console = Console(file=io.StringIO(), record=True, width=width, height=height, force_terminal=True, color_system="truecolor")
    console.print(frame(job(), metrics(60), rank_map, width, height, NOW))
    return console.export_text().rstrip("\n").splitlines()


def test_glyphs_and_legend_are_the_trainers() -> None:
    assert [glyph(r, 16) for r in (0, 1, 8, 16, 40)] == [" ", ".", "=", "@", "@"]  # a live expert never blank
    assert legend(16).startswith("rank: .=2 :=4") and legend(16).endswith("@=16 (of r_max 16)")
    text = rank_summary([[4, 16, 8, 8]], 16)
    assert text.splitlines()[1] == "  L0  |:@==|  4 16 8 8  (min 4, max 16, mean 9.0)"
    assert text.splitlines()[-1].strip() == legend(16)
    assert set("".join(rank_lines([[4, 16, 8, 8]], 16, 80)[0].split("|")[1])) <= set(SHADES)


def test_a_wide_map_folds_into_bins_that_keep_the_highest_rank() -> None:
    row = [8] * 128
    row[77] = 32
    folded = fold([row, [8] * 128], max_columns=62)
    assert folded.experts_per_glyph == 3 and len(folded.rows[0]) == 43
    assert folded.rows[0][77 // 3] == 32 and folded.rows[1] == [8] * 43
    assert folded.mapping() == "each glyph = 3 experts (highest rank shown)"
    tall = fold([[1, 2]] * 48, max_columns=80, max_rows=12)
    assert tall.layers_per_row == 4 and len(tall.rows) == 12 and "each row = 4 layers" in tall.mapping()
    assert fold([[1, 2]] * 4, 80, 24).mapping() == ""


def test_sparkline_shows_the_shape_of_the_series() -> None:
    assert sparkline([3.0, 2.0, 1.0], 10) == "█▅▁"
    assert sparkline([1.0] * 50, 8) == "▄" * 8  # the last `width` values; a flat series sits mid-height
    assert sparkline([], 8) == ""


def test_the_frame_fits_80_by_24_at_48_by_128() -> None:
    lines = drawn(80, 24, ranks(48, 128))
    assert len(lines) <= 24 and max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert lines[0].startswith("ftjob-0123456789abcdef01234567  running")
    assert "60/90" in text and "elapsed 1:40" in text and "ETA 0:50" in text
    assert "train loss" in text and "3.0" not in lines[2] and "1.5000" in lines[2]  # the latest train loss
    assert "1.7000" in text and "1.00e-04" in text and "12,346" in text  # valid loss, lr, tokens/s
    assert "█" in lines[2] and "▁" in lines[2]  # the loss sparkline
    assert "each glyph = 3 experts; each row = 4 layers (highest rank shown)" in text
    assert "rank: .=4" in text and "(of r_max 32)" in text


def test_the_demo_map_shows_every_expert_and_layer() -> None:
    lines = drawn(80, 24, ranks(4, 16))
    map_lines = [line for line in lines if line.startswith("L")]
    assert [line[:5] for line in map_lines] == ["L0   ", "L1   ", "L2   ", "L3   "]
    assert all(len(line.split("|")[1]) == 16 for line in map_lines) and "each glyph" not in "\n".join(lines)


def test_a_narrow_terminal_crops_nothing_into_the_next_line() -> None:
    for width, height in ((40, 12), (60, 40), (200, 60)):
        lines = drawn(width, height, ranks(48, 128))
        assert max(map(len, lines)) <= width, (width, height)
