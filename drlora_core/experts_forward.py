"""The experts forward with per-expert LoRA, registered with transformers as the experts implementation "drlora".

transformers 5 routes every fused experts module through `ALL_EXPERTS_FUNCTIONS[config._experts_implementation]`
with `(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k))`: the router's real top-k, whatever the family.
We sort the T*k (token, expert) pairs by expert once, then run base weights and LoRA with grouped matmuls over the
same offsets. Where `F.grouped_mm` is missing (torch < 2.10) or refuses the dtype (its CUDA kernels take bf16 only),
the grouped path runs a padded `bmm` instead: rows are scattered into an (experts, capacity, in) buffer at slots
computed on the device, so the one host read is the capacity, once per experts forward, never one per expert.
The loop variant computes the same thing expert by expert; it is the plain cross-check for both.
"""

from __future__ import annotations

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
    groups = Groups(sorted_ids, link.bank.num_experts, link.impl)
    up_name = "gate_up_proj" if getattr(self, "has_gate", True) else "up_proj"
    h = _projection(self, link.bank, up_name, x, groups)
    h = self._apply_gate(h) if getattr(self, "has_gate", True) else self.act_fn(h)  # type: ignore[operator]
    out = _projection(self, link.bank, "down_proj", h, groups)
    if getattr(self, "has_post_expert_norm", False):
        out = self.post_expert_norm(out)  # type: ignore[operator]
    out = out * weights.unsqueeze(-1).to(out.dtype)
    unsorted = torch.empty_like(out).index_copy_(0, perm, out)
    return unsorted.view(num_tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)


class Groups:
    """Rows sorted by expert and the matmul over them: `F.grouped_mm`, the padded bmm, or the per-expert loop."""

    def __init__(self, sorted_ids: torch.Tensor, num_experts: int, impl: str) -> None:
        self.sorted_ids = sorted_ids
        self.num_experts = num_experts
        self.impl = impl
        self.counts = torch.zeros(num_experts, dtype=torch.int32, device=sorted_ids.device)
        self.counts.index_add_(0, sorted_ids, torch.ones_like(sorted_ids, dtype=torch.int32))
        self.offsets = torch.cumsum(self.counts, 0, dtype=torch.int32)
        self._slots: tuple[torch.Tensor, int] | None = None

    def matmul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Row i times w[expert of row i]: x (N, in), w (E, in, out) -> (N, out)."""
        if self.impl == "loop":
            return self._loop(x, w)
        if grouped_mm_supported(x.device, x.dtype):
            return F.grouped_mm(x, w, offs=self.offsets)
        return self._padded(x, w)

    def _padded(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        slot, capacity = self._slot_layout()
        padded = x.new_zeros(self.num_experts, capacity, x.shape[-1]).index_put((self.sorted_ids, slot), x)
        return torch.bmm(padded, w)[self.sorted_ids, slot]

    def _slot_layout(self) -> tuple[torch.Tensor, int]:
        if self._slots is None:
            starts = (self.offsets - self.counts).to(torch.long)
            slot = torch.arange(self.sorted_ids.shape[0], device=self.sorted_ids.device) - starts[self.sorted_ids]
            self._slots = slot, int(self.counts.max())  # the fallback's one host read per experts forward
        return self._slots

    def _loop(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ends = self.offsets.tolist()
        starts = [0, *ends[:-1]]
        parts = [x[s:e] @ w[i] for i, (s, e) in enumerate(zip(starts, ends, strict=True)) if e > s]
        return torch.cat(parts) if parts else x.new_zeros(x.shape[0], w.shape[-1])


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    if not hasattr(F, "grouped_mm"):  # torch < 2.10
        return False
    return device.type != "cuda" or dtype == torch.bfloat16


def _projection(module: nn.Module, bank: LoraBank, name: str, x: torch.Tensor, groups: Groups) -> torch.Tensor:
    weight = getattr(module, name)
    # grouped_mm wants (E, in, out); non-transposed families store (E, out, in)
    w = weight if module.is_transposed else weight.transpose(-2, -1)
    y = groups.matmul(x.to(w.dtype), w)
    bias = getattr(module, f"{name}_bias", None) if getattr(module, "has_bias", False) else None
    if bias is not None:
        y = y + bias[groups.sorted_ids]
    if name in bank.lora_A:
        y = y + lora_delta(bank, name, bank.dropout(x, module.training), groups).to(y.dtype)
    return y


def lora_delta(bank: LoraBank, name: str, x: torch.Tensor, groups: Groups) -> torch.Tensor:
    """scaling * ((x A_e^T) * mask_e) B_e^T for rows grouped by expert e (`x` after the LoRA dropout)."""
    r = bank.compute_rank
    a = bank.lora_A[name][:, :r].transpose(-2, -1)  # (E, in, r)
    b = bank.lora_B[name][:, :, :r].transpose(-2, -1)  # (E, r, out)
    dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else a.dtype
    h = groups.matmul(x.to(dtype), a.to(dtype))
    if not bank.uniform:
        active = torch.arange(r, device=h.device)[None, :] < bank.ranks[groups.sorted_ids][:, None]
        h = h * active.to(h.dtype)
    return groups.matmul(h, b.to(dtype)) * bank.scaling


def register() -> None:
    """Make "drlora" a valid `experts_implementation` for every transformers model."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPLEMENTATION_NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION_NAME, drlora_experts_forward)
