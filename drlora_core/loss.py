"""Next-token cross-entropy over label positions only, without ever holding the [tokens, vocab] logits.

The decoder's last hidden states are gathered at the label positions first; the LM head and the fp32 cross-entropy
then run over chunks of those rows, each chunk under non-reentrant activation checkpointing, so the backward
recomputes one chunk's logits at a time instead of keeping all of them. Peak logits memory is one chunk
(`LOSS_CHUNK_BYTES` of fp32 logits plus its gradient), whatever the batch, sequence length or vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

Batch = dict[str, torch.Tensor]
LOSS_CHUNK_BYTES = 64 * 2**20  # fp32 logits of one chunk


def loss_chunk_rows(vocab_size: int) -> int:
    """Label positions per chunk: `LOSS_CHUNK_BYTES` of fp32 logits (the estimator uses the same rule)."""
    return max(1, LOSS_CHUNK_BYTES // (4 * vocab_size))


def token_loss(model: nn.Module, batch: Batch, reduction: str = "sum", label_count: int | None = None) -> torch.Tensor:
    """Cross-entropy summed (or averaged) over the positions whose next-token label is not -100.

    `label_count`, when the caller knows it from the host-side batch, saves the one device read that sizes the
    chunks."""
    hidden = final_hidden_states(model, batch)[:, :-1].flatten(0, 1)
    labels = batch["labels"][:, 1:].flatten()
    keep = labels != -100
    count = int(keep.sum()) if label_count is None else label_count
    # label positions first, in order: a stable sort instead of boolean indexing, which would read the device
    positions = torch.argsort(keep.to(torch.int8), descending=True, stable=True)[:count]
    rows, targets = hidden[positions], labels[positions]
    head: nn.Linear = model.get_output_embeddings()  # type: ignore[operator]
    scale = _logit_divisor(model)
    step = loss_chunk_rows(int(head.weight.shape[0]))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, step):
        chunk, chunk_targets = rows[start:start + step], targets[start:start + step]
        if torch.is_grad_enabled() and chunk.requires_grad:
            total = total + checkpoint(_chunk_loss, chunk, chunk_targets, head, scale, use_reentrant=False)
        else:
            total = total + _chunk_loss(chunk, chunk_targets, head, scale)
    if reduction == "mean":
        return total / max(count, 1)
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return total


def final_hidden_states(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The decoder's output before the LM head: (batch, seq, hidden)."""
    decoder = model.get_decoder()  # type: ignore[operator]
    out: Any = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # type: ignore[no-any-return]


def _chunk_loss(rows: torch.Tensor, targets: torch.Tensor, head: nn.Module, divisor: float) -> torch.Tensor:
    logits = head(rows).float()
    if divisor != 1.0:
        logits = logits / divisor
    return F.cross_entropy(logits, targets, reduction="sum")


def _logit_divisor(model: nn.Module) -> float:
    """Granite-style models divide their logits by `config.logits_scaling` after the head."""
    value = getattr(getattr(model, "config", None), "logits_scaling", None)
    return float(value) if isinstance(value, int | float) and value > 0 else 1.0
