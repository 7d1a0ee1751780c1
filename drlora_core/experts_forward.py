"""The experts forward with per-expert LoRA, registered with transformers as the experts implementation "drlora".

transformers 5 routes every fused experts module through `ALL_EXPERTS_FUNCTIONS[config._experts_implementation]`
with `(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k))`: the router's real top-k, whatever the family.
We sort the T*k (token, expert) pairs by expert once, then run base weights and LoRA with grouped matmuls over the
same offsets. The loop variant computes the same thing expert by expert (one host sync for the offsets); it exists
as a fallback and as a cross-check for the grouped path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from drlora_core.bank import LoraBank
from drlora_core.routing import RoutingState

IMPLEMENTATION_NAME = "drlora"


class SiteLink(Protocol):
    """What an adapted experts module carries in its `_drlora` attribute."""

    layer: int
    bank: LoraBank
    routing: RoutingState
    impl: str  # "grouped" | "loop"


def drlora_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    link: SiteLink = self._drlora  # type: ignore[assignment]
    link.routing.record(link.layer, top_k_index, top_k_weights)
    num_tokens, top_k = top_k_index.shape
    expert_ids = top_k_index.reshape(-1)
    sorted_ids, perm = torch.sort(expert_ids, stable=True)
    x = hidden_states[perm // top_k]
    weights = top_k_weights.reshape(-1)[perm]
    counts = torch.zeros(link.bank.num_experts, dtype=torch.int32, device=x.device)
    counts.index_add_(0, sorted_ids, torch.ones_like(sorted_ids, dtype=torch.int32))
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    matmul = _grouped_matmul if link.impl == "grouped" else _loop_matmul
    up_name = "gate_up_proj" if getattr(self, "has_gate", True) else "up_proj"
    h = _projection(self, link.bank, up_name, x, sorted_ids, offsets, matmul)
    h = self._apply_gate(h) if getattr(self, "has_gate", True) else self.act_fn(h)  # type: ignore[operator]
    out = _projection(self, link.bank, "down_proj", h, sorted_ids, offsets, matmul)
    if getattr(self, "has_post_expert_norm", False):
        out = self.post_expert_norm(out)  # type: ignore[operator]
    out = out * weights.unsqueeze(-1).to(out.dtype)
    unsorted = torch.empty_like(out).index_copy_(0, perm, out)
    return unsorted.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)


Matmul = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _projection(module: nn.Module, bank: LoraBank, name: str, x: torch.Tensor, sorted_ids: torch.Tensor,
                offsets: torch.Tensor, matmul: Matmul) -> torch.Tensor:
    weight = getattr(module, name)
    # grouped_mm wants (E, in, out); non-transposed families store (E, out, in)
    w = weight if module.is_transposed else weight.transpose(-2, -1)
    y = matmul(x.to(w.dtype), w, offsets)
    bias = getattr(module, f"{name}_bias", None) if getattr(module, "has_bias", False) else None
    if bias is not None:
        y = y + bias[sorted_ids]
    if name in bank.lora_A:
        y = y + lora_delta(bank, name, bank.dropout(x, module.training), sorted_ids, offsets, matmul).to(y.dtype)
    return y


def lora_delta(bank: LoraBank, name: str, x: torch.Tensor, sorted_ids: torch.Tensor, offsets: torch.Tensor,
               matmul: Matmul) -> torch.Tensor:
    """scaling * ((x A_e^T) * mask_e) B_e^T for rows grouped by expert e (`x` after the LoRA dropout)."""
    r = bank.compute_rank
    a = bank.lora_A[name][:, :r].transpose(-2, -1)  # (E, in, r)
    b = bank.lora_B[name][:, :, :r].transpose(-2, -1)  # (E, r, out)
    dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else a.dtype
    h = matmul(x.to(dtype), a.to(dtype), offsets)
    if not bank.uniform:
        active = torch.arange(r, device=h.device)[None, :] < bank.ranks[sorted_ids][:, None]
        h = h * active.to(h.dtype)
    return matmul(h, b.to(dtype), offsets) * bank.scaling


def _grouped_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and x.dtype != torch.bfloat16:  # CUDA grouped GEMM kernels take bf16 only
        return _loop_matmul(x, w, offsets)
    return F.grouped_mm(x, w, offs=offsets)


def _loop_matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    ends = offsets.tolist()  # the fallback's one host sync per call
    starts = [0, *ends[:-1]]
    parts = [x[s:e] @ w[i] for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if e > s]
    if not parts:
        return x.new_zeros(x.shape[0], w.shape[-1])
    return torch.cat(parts)


def register() -> None:
    """Make "drlora" a valid `experts_implementation` for every transformers model."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPLEMENTATION_NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION_NAME, drlora_experts_forward)
