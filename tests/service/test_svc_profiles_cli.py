"""What `drlora profiles get` prints for a finished profile: every line fits the terminal, the share map and the
rank map are there with their legends, and a failed profile shows its error."""

from __future__ import annotations

from typing import Any

from drlora_cli.profiles_cmd import share_lines, summary_lines


def profile(experts: int = 128, layers: int = 48, status: str = "succeeded") -> dict[str, Any]:
    shares = [[(e + layer) % 7 + 1 for e in range(experts)] for layer in range(layers)]
    frequency = [[v / sum(row) for v in row] for row in shares]
    return {
        "id": "ftprof-0123456789abcdef01234567", "status": status, "model": "qwen3-30b-a3b",
        "training_file": "file-0123456789abcdef01234567", "error": None,
        "hyperparameters": {"batch_size": 8, "seed": 0, "r_init": 8, "r_target": 16, "r_max": 32,
                            "max_seq_len": 512},
        "examples": 256, "tokens": 51234, "frequency": frequency,
        "static_ranks": [[8 + (e % 3) * 8 for e in range(experts)] for _ in range(layers)],
        "lengths": {"records": 1000, "total_tokens": 400000, "min": 12, "p50": 300, "p90": 700, "max": 2048,
                    "histogram": []},
        "truncation": {"max_seq_len": 512, "truncated_examples": 200, "dropped_examples": 3, "cut_tokens": 90000,
                       "cut_fraction": 0.225},
    }


def test_a_real_shape_profile_fits_80_columns() -> None:
    lines = summary_lines(profile(), 80)
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = "\n".join(lines)
    assert "22.5% of the tokens" in text and "p90 700" in text
    assert "each glyph = 2 experts" in text and "share: " in text and "rank: " in text


def test_the_largest_share_gets_the_darkest_glyph() -> None:
    lines = share_lines([[0.5, 0.25, 0.25, 0.0]], 80)
    assert lines[0] == "L0   |@== |"  # half the largest share: the middle glyph; none: blank


def test_a_failed_profile_shows_only_its_error() -> None:
    failed = {**profile(status="failed"), "error": {"code": "invalid_input", "message": "file gone", "param": None}}
    lines = summary_lines(failed, 80)
    assert lines[-1] == "error: invalid_input: file gone" and not any("routing share" in line for line in lines)
