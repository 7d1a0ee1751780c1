"""Greedy decoding of completions in batches, for exact-match accuracy.

Prompts are left-padded so every row's next token sits in the last column; positions come from the attention mask,
so padding shifts nothing. The KV cache carries the prompt: each further step feeds one token per row. Forwards
here run outside `routing.training_forward`, so they are never counted as routing of the training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def greedy_completions(model: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int,
                       batch_size: int = 64, use_cache: bool = True) -> list[str]:
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    prefix = _special_prefix(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [prefix + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        ids, mask = _left_pad(chunk, pad, device)
        generated = _decode(model, ids, mask, eos, max_new_tokens, use_cache)
        out.extend(tokenizer.decode(_until_eos(row, eos), skip_special_tokens=True) for row in generated.tolist())
    return out


def _decode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, eos: int, max_new: int,
            use_cache: bool) -> torch.Tensor:
    rows = ids.shape[0]
    new = torch.empty(rows, 0, dtype=ids.dtype, device=ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    past = None
    step_ids = ids
    for _ in range(max_new):
        positions = mask.cumsum(-1) - 1
        if use_cache and past is not None:
            positions = positions[:, -1:]
        else:
            step_ids = torch.cat([ids, new], dim=1)
        cache: dict[str, Any] = {"cache": past} if past is not None else {}  # transformers 5 names the KV cache `cache`
        result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions.clamp_min(0),
                       use_cache=use_cache, **cache)
        past = result.cache if use_cache else None
        token = result.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, eos), token)
        new = torch.cat([new, token[:, None]], dim=1)
        done |= token == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = token[:, None]
    return new


def _left_pad(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _until_eos(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos)] if eos in row else row


def _special_prefix(tokenizer: Any) -> list[int]:
    """The tokens the training data puts before a prompt (a BOS, if the tokenizer adds one)."""
    from drlora_core.data import _special_prefix as prefix

    return list(prefix(tokenizer))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of completions equal to the reference after stripping whitespace (the demo task's metric)."""
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / max(len(references), 1)
