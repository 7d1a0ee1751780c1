"""AdamW with a step count per rank slice (`LoraConfig.per_slice_adam_steps`).

torch's AdamW keeps one step counter per tensor. When growth activates a slice and zeroes its moments late in a run,
the tensor's counter is large, so the bias correction is ~1 and the slice's first update is
lr * (1 - beta1) / sqrt(1 - beta2) per element: 3.16 x lr with the default betas, where a slice present from step 0
moved lr on its first step. Here each slice of a LoRA bank counts its own steps (reset to zero by `growth.grow`),
so its first update after growth is bias-corrected like any first update. Parameters in a group without a
`slice_dim` (routers) count steps per tensor, as plain AdamW does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

SLICE_STEP = "slice_step"


class SliceAdamW(torch.optim.Optimizer):
    """Decoupled-weight-decay Adam (as torch.optim.AdamW) with the bias correction keyed on each slice's own age.
    A group's `slice_dim` names the parameter dimension that indexes rank slices (A: 1, B: 2); dimension 0 is the
    expert."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "slice_dim": None})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state[SLICE_STEP] = torch.zeros(_age_shape(p, group["slice_dim"]), device=p.device)
                age = state[SLICE_STEP].add_(1.0)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1.0 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                denom = (v / (1.0 - beta2 ** age)).sqrt_().add_(group["eps"])
                p.addcdiv_(m / (1.0 - beta1 ** age), denom, value=-group["lr"])
        return loss


def _age_shape(param: torch.Tensor, slice_dim: int | None) -> tuple[int, ...]:
    if slice_dim is None:
        return ()
    return tuple(n if d in (0, slice_dim) else 1 for d, n in enumerate(param.shape))
