"""FLOPs of one training step: executed (torch's FlopCounterMode) and analytic (the experts and their LoRA).

FlopCounterMode knows no formula for grouped matmuls, which carry both our experts and transformers' `grouped_mm`
implementation: `GROUPED_MM_FLOPS` supplies it (every row of the left operand meets one group's matrix, whatever
the layout: 2 x numel(left) x columns(right)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from drlora_core.families import ExpertsSite


def _grouped_mm_flops(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    numel = 1
    for d in a_shape:
        numel *= d
    return 2 * numel * b_shape[-1]


def grouped_mm_ops() -> dict[Any, Any]:
    ops: dict[Any, Any] = {torch.ops.aten._grouped_mm: _grouped_mm_flops}
    transformers_ops = getattr(torch.ops, "transformers", None)
    for name in ("grouped_mm_fallback",):  # transformers' own op where torch's kernel is missing
        op = getattr(transformers_ops, name, None) if transformers_ops is not None else None
        if op is not None:
            ops[op] = _grouped_mm_flops
    return ops


def executed_flops(run_step: Any) -> int:
    """Matmul FLOPs torch executes in one call of `run_step` (forward, backward, optimizer)."""
    counter = FlopCounterMode(display=False, custom_mapping=grouped_mm_ops())
    with counter:
        run_step()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class AnalyticFlops:
    experts: int  # frozen experts: forward, and the input gradient in backward
    lora: int  # LoRA at its compute rank: forward, input and weight gradients

    @property
    def total(self) -> int:
        return self.experts + self.lora


def analytic_flops(sites: list[ExpertsSite], tokens: int, top_k: int, lora_rank: int | list[int]) -> AnalyticFlops:
    """Experts and LoRA FLOPs of one step over `tokens` tokens routed to `top_k` experts each.

    A (rows x in) @ (in x out) matmul costs 2 rows in out. Frozen experts: forward + input gradient = 2 matmuls;
    LoRA's two small matmuls: forward + input gradient + weight gradient = 3 each. `lora_rank` is the rank the
    matmuls run at (per layer for dr_lora: the compute rank), 0 for no LoRA: then the input gradients reach the
    embeddings. With LoRA nothing below the first adapted layer needs a gradient, so that layer's first projection
    computes no input gradient.
    """
    rows = tokens * top_k
    experts = lora = 0
    for i, site in enumerate(sites):
        r = lora_rank[i] if isinstance(lora_rank, list) else lora_rank
        for j, p in enumerate(site.projections):
            needs_input_grad = r == 0 or i > 0 or j > 0
            experts += (2 if needs_input_grad else 1) * 2 * rows * p.in_features * p.out_features
            lora += ((3 if needs_input_grad else 2) * 2 * rows * r * p.in_features
                     + 3 * 2 * rows * r * p.out_features)
    return AnalyticFlops(experts, lora)


def peft_analytic_flops(sites: list[ExpertsSite], tokens: int, top_k: int, rank: int) -> AnalyticFlops:
    """PEFT's `target_parameters` LoRA materialises W + B A per expert on every forward, so its backward also
    computes the full (E, in, out) weight gradient of the experts matmul, and the delta costs 3 dense products."""
    rows = tokens * top_k
    experts = lora = 0
    for i, site in enumerate(sites):
        for j, p in enumerate(site.projections):
            experts += (2 if i or j else 1) * 2 * rows * p.in_features * p.out_features
            lora += 2 * rows * p.in_features * p.out_features  # weight gradient of the parametrised weight
            lora += 3 * 2 * site.num_experts * rank * p.in_features * p.out_features  # B @ A, and its two grads
    return AnalyticFlops(experts, lora)
