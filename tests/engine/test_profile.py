"""The routing profile (drlora_core/profile.py, profile_run.py) against what the trainer itself records: the same
model, examples and max_seq_len route the same tokens to the same experts, and `static` starts from the ranks the
profile predicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drlora_core.assets import DEMO_MODEL_ID, demo_train_file
from drlora_core.callbacks import ExpertStats, Hooks
from drlora_core.config import LoraConfig, RunConfig, TrainConfig
from drlora_core.profile_run import length_stats, profile_run
from drlora_core.run import train_run

pytestmark = pytest.mark.timeout(300)

BATCH = 8


def config(max_steps: int = 1, max_seq_len: int = 64) -> RunConfig:
    return RunConfig(LoraConfig(method="static", r_init=2, r_target=4, r_max=8, growth_interval=1, dropout=0.0),
                     TrainConfig(max_steps=max_steps, epochs=1, batch_size=BATCH, lr=1e-3, warmup_ratio=0.0,
                                 max_seq_len=max_seq_len, seed=3, device="cpu", gradient_checkpointing=False))


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "train.jsonl"
    path.write_text("".join(demo_train_file().read_text().splitlines(keepends=True)[:40]))
    return path


def test_profile_frequencies_equal_the_routing_the_trainer_records_at_step_0(small_file: Path, tmp_path: Path):
    profile = profile_run(DEMO_MODEL_ID, small_file, config(), max_examples=BATCH)
    assert profile.examples == BATCH
    for row in profile.frequency:
        assert len(row) == 16 and sum(row) == pytest.approx(1.0, abs=1e-9) and min(row) >= 0

    recorded: list[ExpertStats] = []
    started: list[list[list[int]]] = []
    train_run(DEMO_MODEL_ID, small_file, tmp_path / "run", config(max_steps=1),
              callbacks=[Hooks(start=lambda total, ranks, step: started.append(ranks),
                               end=lambda step, stats, stopped: recorded.append(stats))])
    # After one step the frequency EMA holds exactly that step's shares (it starts at zero).
    trainer = recorded[0].frequency
    assert len(trainer) == len(profile.frequency) == 4
    for mine, theirs in zip(profile.frequency, trainer, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-6)
    # a different first batch routes differently: the comparison above can fail
    reseeded = dataclasses.replace(config(), train=dataclasses.replace(config().train, seed=4))
    other = profile_run(DEMO_MODEL_ID, small_file, reseeded, max_examples=BATCH)
    assert any(abs(a - b) > 1e-3 for x, y in zip(other.frequency, trainer, strict=True) for a, b in zip(x, y, strict=True))


def test_static_starts_from_the_ranks_the_profile_predicts(small_file: Path, tmp_path: Path):
    # 40 examples are 5 batches: both the profile and static's own pass see the whole file.
    profile = profile_run(DEMO_MODEL_ID, small_file, config(), max_examples=1000)
    assert profile.examples == 40
    started: list[list[list[int]]] = []
    train_run(DEMO_MODEL_ID, small_file, tmp_path / "run", config(max_steps=1),
              callbacks=[Hooks(start=lambda total, ranks, step: started.append(ranks))])
    assert started[0] == profile.static_ranks
    assert all(sum(row) == 16 * 4 for row in profile.static_ranks)
    assert any(len(set(row)) > 1 for row in profile.static_ranks)


def test_the_cut_and_the_lengths_count_every_token(small_file: Path):
    profile = profile_run(DEMO_MODEL_ID, small_file, config(max_seq_len=14), max_examples=BATCH)
    lengths, cut = profile.lengths, profile.truncation
    assert lengths.records == 40 and lengths.min <= lengths.p50 <= lengths.p90 <= lengths.max
    assert sum(b.count for b in lengths.histogram) == 40
    assert cut.max_seq_len == 14 and cut.truncated_examples > 0 and cut.cut_tokens > 0
    assert cut.cut_fraction == pytest.approx(cut.cut_tokens / lengths.total_tokens)
    assert profile.tokens <= BATCH * 14


def test_length_statistics_of_known_lengths():
    stats = length_stats([5, 1, 3, 10, 2, 8, 7, 4, 6, 9])
    assert (stats.min, stats.p50, stats.p90, stats.max, stats.total_tokens) == (1, 5, 9, 10, 55)
    assert [b.count for b in stats.histogram] == [1] * 10 and stats.histogram[0].start == 1
