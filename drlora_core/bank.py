"""Per-expert LoRA weights with a reserved rank r_max and an active rank per expert.

Active slices are always a prefix: expert e uses slices [0, ranks[e]). A (E, r_max, in) and B (E, out, r_max) hold
every slice from the start (the memory is reserved up front, as the method requires); a slice outside the prefix is
multiplied by zero in the forward pass, so it contributes nothing and receives exactly zero gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from drlora_core.config import RANK_MULTIPLE
from drlora_core.families import Projection


class LoraBank(nn.Module):
    """The LoRA of one experts module: one (A, B) pair per projection, ranks shared by an expert's projections."""

    ranks: torch.Tensor  # (E,) long buffer: active rank per expert, on the device

    def __init__(self, num_experts: int, projections: tuple[Projection, ...], r_max: int, ranks: list[int],
                 scaling: float, dropout: float) -> None:
        super().__init__()
        if len(ranks) != num_experts:
            raise ValueError(f"got {len(ranks)} ranks for {num_experts} experts")
        self.num_experts = num_experts
        self.r_max = r_max
        self.scaling = scaling
        self.dropout_p = dropout
        self.projection_names = tuple(p.name for p in projections)
        self.lora_A = nn.ParameterDict(
            {p.name: nn.Parameter(torch.empty(num_experts, r_max, p.in_features)) for p in projections})
        self.lora_B = nn.ParameterDict(
            {p.name: nn.Parameter(torch.zeros(num_experts, p.out_features, r_max)) for p in projections})
        self.register_buffer("ranks", torch.tensor(ranks, dtype=torch.long))
        self.rank_list: list[int] = list(ranks)  # host copy: read without a device sync
        for a in self.lora_A.values():
            init_a_(a.data)

    def dropout(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """LoRA dropout, on while the *model* trains: the banks live beside the model, not inside it, so
        `model.eval()` does not reach their own `training` flag and must not be the switch."""
        return F.dropout(x, self.dropout_p, training) if self.dropout_p > 0 else x

    @property
    def compute_rank(self) -> int:
        """Rank the matmuls run at: the largest active rank rounded up to the kernels' alignment (the extra
        slices are masked), never above r_max."""
        top = max(self.rank_list)
        return min(self.r_max, math.ceil(top / RANK_MULTIPLE) * RANK_MULTIPLE)

    @property
    def uniform(self) -> bool:
        return min(self.rank_list) == max(self.rank_list) == self.compute_rank

    def set_ranks(self, ranks: list[int]) -> None:
        if any(not 0 < r <= self.r_max for r in ranks):
            raise ValueError(f"ranks must be in [1, {self.r_max}], got {ranks}")
        self.rank_list = list(ranks)
        self.ranks.copy_(torch.tensor(ranks, dtype=torch.long))

    def slice_mask(self) -> torch.Tensor:
        """(E, r_max) float mask of active slices."""
        idx = torch.arange(self.r_max, device=self.ranks.device)
        return (idx[None, :] < self.ranks[:, None]).to(self.lora_A[self.projection_names[0]].dtype)

    def delta_weight(self, name: str) -> torch.Tensor:
        """Dense (E, out, in) update of a projection: scaling * B diag(mask) A."""
        a, b = self.lora_A[name], self.lora_B[name]
        return self.scaling * torch.einsum("eor,er,eri->eoi", b, self.slice_mask(), a)


def init_a_(a: torch.Tensor) -> None:
    """LoRA's A init (kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), over the last dim."""
    bound = 1.0 / math.sqrt(a.shape[-1])
    with torch.no_grad():
        a.uniform_(-bound, bound)
