"""Decoding completions in batches: greedy (the default) or sampled (temperature, nucleus top_p, a seed).

Prompts arrive as token ids, already formatted as training formatted them (see `generate.prompt_ids`). They are
left-padded so every row's next token sits in the last column; positions come from the attention mask, so padding
shifts nothing. The KV cache carries the prompt: each further step feeds one token per row. A row stops at EOS.
Forwards here run outside `routing.training_forward`, so they are never counted as routing of the training data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax; top_p and seed unused); above 0, tokens are drawn from the softmax of
    logits / temperature restricted to the smallest set whose probability reaches top_p, with a generator seeded
    by `seed`, so the same settings give the same completions on the same device."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer of at least 1, got {self.max_new_tokens!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or a positive number, got {self.temperature!r}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@torch.no_grad()
def decode_ids(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], sampling: Sampling,
               batch_size: int = 64, use_cache: bool = True) -> list[str]:
    """The completion of each tokenised prompt, decoded up to (not including) EOS, special tokens skipped."""
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generator = None if sampling.greedy else torch.Generator(device=device).manual_seed(sampling.seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = _left_pad([list(p) for p in prompts[start:start + batch_size]], pad, device)
        generated = _decode(model, ids, mask, eos, sampling, generator, use_cache)
        out.extend(tokenizer.decode(_until_eos(row, eos), skip_special_tokens=True) for row in generated.tolist())
    return out


def _decode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, eos: int, sampling: Sampling,
            generator: torch.Generator | None, use_cache: bool) -> torch.Tensor:
    rows = ids.shape[0]
    new = torch.empty(rows, 0, dtype=ids.dtype, device=ids.device)
    done = torch.zeros(rows, dtype=torch.bool, device=ids.device)
    past = None
    step_ids = ids
    for _ in range(sampling.max_new_tokens):
        positions = mask.cumsum(-1) - 1
        if use_cache and past is not None:
            positions = positions[:, -1:]
        else:
            step_ids = torch.cat([ids, new], dim=1)
        cache: dict[str, Any] = {"cache": past} if past is not None else {}  # transformers 5 names the KV cache `cache`
        result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions.clamp_min(0),
                       use_cache=use_cache, **cache)
        past = result.cache if use_cache else None
        token = _next_token(result.logits[:, -1].float(), sampling, generator)
        token = torch.where(done, torch.full_like(token, eos), token)
        new = torch.cat([new, token[:, None]], dim=1)
        done |= token == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = token[:, None]
    return new


def _next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs = sorted_probs.masked_fill(before >= sampling.top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


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
