"""One routing profile from files on disk: the base model's routing over the first examples a job would train on,
what `static` would allocate from it, and the dataset's token lengths and what `max_seq_len` cuts. No training.

The whole file is tokenised (as a job does), so that the examples profiled are exactly those the trainer's first
steps would take (its epoch order depends on how many examples survive the cut) and the length statistics cover
every record. Routing is profiled on the first `max_examples` examples of epoch 0, rounded up to whole batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from drlora_core.adapter import attach
from drlora_core.config import RunConfig
from drlora_core.data import BatchStream, pad_token_id, tokenize_records
from drlora_core.formats import read_records
from drlora_core.profile import profile_batches, routing_counts, routing_shares, static_ranks
from drlora_core.run import load_base, resolve_device, resolve_dtype

HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class LengthBin:
    start: int  # records of start <= tokens < end
    end: int
    count: int


@dataclass(frozen=True)
class Lengths:
    """Token counts per record before the cut (what the data holds, whatever `max_seq_len` keeps)."""

    records: int
    total_tokens: int
    min: int
    p50: int
    p90: int
    max: int
    histogram: list[LengthBin]  # at most HISTOGRAM_BINS equal bins from min to max


@dataclass(frozen=True)
class Truncation:
    max_seq_len: int
    truncated_examples: int  # records cut to max_seq_len
    dropped_examples: int  # records left with no target after the cut (never trained on)
    cut_tokens: int
    cut_fraction: float  # of all the file's tokens


@dataclass(frozen=True)
class RoutingProfile:
    examples: int  # examples profiled
    tokens: int  # their non-padding tokens, each routed once per layer
    frequency: list[list[float]]  # layers x experts: share of the layer's routed tokens; each row sums to 1
    static_ranks: list[list[int]]  # what `static` would allocate from this frequency at (r_init, r_target, r_max)
    lengths: Lengths
    truncation: Truncation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_run(model: str, train_file: Path, config: RunConfig, max_examples: int) -> RoutingProfile:
    """Profile `model`'s routing on `train_file` under `config` (resolved; its batch size, seed and max_seq_len
    decide the examples, exactly as for a job)."""
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    config.require_resolved()
    t = config.train
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    base, tokenizer, _ = load_base(model, device, dtype)
    fmt, records = read_records(train_file)
    data = tokenize_records(fmt, records, tokenizer, t.max_seq_len)
    stream = BatchStream(data.examples, t.resolved_batch_size, t.seed, pad_token_id(tokenizer))
    adapter = attach(base, config.lora, impl=t.experts_impl)
    batches = list(profile_batches(stream, math.ceil(max_examples / stream.batch_size)))
    counts = routing_counts(base, adapter, batches, device, dtype)
    experts = [bank.num_experts for bank in adapter.banks]
    kept = sum(len(e.input_ids) for e in data.examples)
    return RoutingProfile(
        examples=sum(int(b["input_ids"].shape[0]) for b in batches),
        tokens=int(sum(int(b["attention_mask"].sum()) for b in batches)),
        frequency=routing_shares(counts, experts),
        static_ranks=static_ranks(counts, experts, config.lora),
        lengths=length_stats(data.lengths),
        truncation=truncation(data.lengths, kept, t.max_seq_len, data.truncated, data.dropped),
    )


def length_stats(lengths: list[int]) -> Lengths:
    if not lengths:
        raise ValueError("no records to measure")
    ordered = sorted(lengths)
    low = ordered[0]
    width = max(1, math.ceil((ordered[-1] - low + 1) / HISTOGRAM_BINS))
    counts = torch.bincount((torch.tensor(ordered) - low) // width).tolist()
    bins = [LengthBin(low + i * width, low + (i + 1) * width, int(c)) for i, c in enumerate(counts)]
    return Lengths(records=len(ordered), total_tokens=sum(ordered), min=ordered[0], p50=_percentile(ordered, 50),
                   p90=_percentile(ordered, 90), max=ordered[-1], histogram=bins)


def truncation(lengths: list[int], kept_tokens: int, max_seq_len: int, truncated: int, dropped: int) -> Truncation:
    total = sum(lengths)
    cut = total - kept_tokens
    return Truncation(max_seq_len, truncated, dropped, cut, cut / total if total else 0.0)


def _percentile(ordered: list[int], q: int) -> int:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
