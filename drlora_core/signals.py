"""The two signals of DR-LoRA and their combination (DRLORA.md, 'Signals').

- routing frequency f[l, e]: EMA of each expert's share of its layer's routed tokens per optimizer step;
- slice importance imp[l][p, e, j] = EMA of |sum(A[j,:] * dA[j,:])| + |sum(B[:,j] * dB[:,j])| (a sum, not a
  product: B starts at zero), and expert importance g[l, e] = mean over active slices, averaged over projections;
- saliency S = (f_hat + eps) * (g_hat + eps) / (r + 1) ** gamma with f_hat, g_hat normalised within the layer
  (`LoraConfig.saliency_signal` swaps the demand term: f or g alone, or our per-token variant g / f).
All updates run on the device without host syncs; only a growth event reads them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drlora_core.bank import LoraBank
from drlora_core.config import SaliencySignal

EPS = 1e-6


@dataclass
class Signals:
    frequency: torch.Tensor  # (L, E_max) EMA of routing shares
    importance: list[torch.Tensor]  # per layer (P, E, r_max) slice-importance EMA

    @classmethod
    def zeros(cls, banks: list[LoraBank], device: torch.device) -> Signals:
        num_experts = max(b.num_experts for b in banks)
        return cls(
            frequency=torch.zeros(len(banks), num_experts, device=device),
            importance=[torch.zeros(len(b.projection_names), b.num_experts, b.r_max, device=device) for b in banks],
        )

    def update_frequency(self, counts: torch.Tensor, beta_f: float) -> None:
        share = counts / counts.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        self.frequency.mul_(beta_f).add_(share, alpha=1.0 - beta_f)

    @torch.no_grad()
    def update_importance(self, banks: list[LoraBank], beta_g: float) -> None:
        """Call after backward, before the gradients are cleared."""
        for layer, bank in enumerate(banks):
            self.importance[layer].mul_(beta_g).add_(slice_scores(bank), alpha=1.0 - beta_g)

    def reset_importance(self) -> None:
        for imp in self.importance:
            imp.zero_()

    def expert_importance(self, banks: list[LoraBank]) -> list[list[float]]:
        """g[l][e]: mean importance over e's active slices, averaged over projections (host values)."""
        result = []
        for bank, imp in zip(banks, self.importance, strict=True):
            mask = bank.slice_mask().to(imp.dtype)  # (E, r_max)
            per_proj = (imp * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # (P, E)
            result.append(per_proj.mean(0).tolist())
        return result


def slice_scores(bank: LoraBank) -> torch.Tensor:
    """(P, E, r_max) |A.dA| + |B.dB| per rank slice; zero where a projection got no gradient. Only the first
    `compute_rank` slices can have a gradient (the forward never touches the others), so only they are read."""
    r = bank.compute_rank
    scores = []
    for name in bank.projection_names:
        a, b = bank.lora_A[name], bank.lora_B[name]
        score = torch.zeros(bank.num_experts, bank.r_max, device=a.device, dtype=a.dtype)
        if a.grad is not None:
            score[:, :r] += torch.linalg.vecdot(a[:, :r], a.grad[:, :r]).abs()
        if b.grad is not None:
            score[:, :r] += torch.linalg.vecdot(b[:, :, :r], b.grad[:, :, :r], dim=-2).abs()
        scores.append(score)
    return torch.stack(scores)


def saliency(frequency: list[float], importance: list[float], ranks: list[int], gamma: float,
             signal: SaliencySignal = "f_g") -> list[float]:
    """S = demand / (r + 1) ** gamma; demand is the paper's (f_hat + eps) * (g_hat + eps) for "f_g", one normalised
    factor for "f" or "g", and for "g_per_token" (our variant) g / f normalised: slice importance sums gradients
    over the tokens an expert receives, so dividing by its routing share leaves the demand per routed token."""
    f_hat, g_hat = _normalise(frequency), _normalise(importance)
    demand = {
        "f_g": lambda: [(f + EPS) * (g + EPS) for f, g in zip(f_hat, g_hat, strict=True)],
        "f": lambda: [f + EPS for f in f_hat],
        "g": lambda: [g + EPS for g in g_hat],
        "g_per_token": lambda: [v + EPS for v in _normalise(
            [g / f if f > 0 else 0.0 for f, g in zip(f_hat, g_hat, strict=True)])],
    }[signal]()
    return [d / (r + 1) ** gamma for d, r in zip(demand, ranks, strict=True)]


def _normalise(values: list[float]) -> list[float]:
    total = sum(values)
    if total <= 0:
        return [1.0 / len(values)] * len(values)
    return [v / total for v in values]
