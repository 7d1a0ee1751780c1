"""Cap every expert's LoRA rank at `max_rank` by truncated SVD of its update B·A, one projection at a time.

The SVD never forms the dense (out, in) update: with B = Q_b R_b and A^T = Q_a R_a (thin QR), B·A = Q_b (R_b R_a^T)
Q_a^T, so the singular values are those of the r×r core. Keeping the top k gives the best rank-k approximation in
Frobenius norm; its relative error ||ΔW - ΔW_k||_F / ||ΔW||_F is sqrt(Σ_{i>k} s_i²) / sqrt(Σ s_i²) (0 for a zero
update). The kept factors are balanced: B' = Q_b U_k √S_k, A' = √S_k V_k^T Q_a^T.

All projections of a capped expert (gate_up_proj and down_proj, which share the expert's rank) get rank k; experts
at or under the cap are copied unchanged and are not listed in the report (they are exact).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from drlora_core.adapter_files import StoredAdapter, StoredSite


@dataclass(frozen=True)
class CappedExpert:
    layer: int
    expert: int
    original_rank: int
    errors: dict[str, float]  # projection -> relative Frobenius error

    @property
    def max_error(self) -> float:
        return max(self.errors.values())


@dataclass(frozen=True)
class CapReport:
    max_rank: int
    capped: tuple[CappedExpert, ...]

    def __post_init__(self) -> None:
        if self.max_rank < 1:
            raise ValueError(f"max_rank must be at least 1, got {self.max_rank}")

    @property
    def max_error(self) -> float:
        return max((c.max_error for c in self.capped), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"max_rank": self.max_rank, "max_error": self.max_error,
                "uncapped": "experts at or under max_rank are exact and not listed",
                "experts": [{"layer": c.layer, "expert": c.expert, "original_rank": c.original_rank,
                             "errors": c.errors} for c in self.capped]}


def truncate(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-k factors (A' (k, in), B' (out, k)) of B·A for A (r, in), B (out, r), and the relative error."""
    a64, b64 = a.double(), b.double()
    qb, rb = torch.linalg.qr(b64)
    qa, ra = torch.linalg.qr(a64.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    root = s[:k].sqrt()
    new_b = (qb @ u[:, :k]) * root
    new_a = root[:, None] * (vh[:k] @ qa.T)
    total = float(s.square().sum())
    error = (float(s[k:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    short = k - new_a.shape[0]  # fewer singular values than k (r or a side smaller than k): zero rank slices
    new_a = torch.nn.functional.pad(new_a, (0, 0, 0, short))
    new_b = torch.nn.functional.pad(new_b, (0, short))
    return new_a.float(), new_b.float(), error


def cap_ranks(stored: StoredAdapter, max_rank: int) -> tuple[StoredAdapter, CapReport]:
    """`stored` with every expert's rank at most `max_rank`, and what it cost."""
    capped: list[CappedExpert] = []
    sites = []
    for site in stored.sites:
        new_site, experts = _cap_site(site, max_rank)
        sites.append(new_site)
        capped.extend(experts)
    return replace(stored, sites=tuple(sites)), CapReport(max_rank, tuple(capped))


def _cap_site(site: StoredSite, k: int) -> tuple[StoredSite, list[CappedExpert]]:
    r_new = min(k, max(site.ranks))
    lora_a = {n: site.lora_A[n][:, :r_new].clone() for n in site.projections}
    lora_b = {n: site.lora_B[n][:, :, :r_new].clone() for n in site.projections}
    capped = []
    for e, rank in enumerate(site.ranks):
        if rank <= k:
            continue
        errors = {}
        for name in site.projections:
            a, b = site.factors(name, e)
            lora_a[name][e], lora_b[name][e], errors[name] = truncate(a, b, k)
        capped.append(CappedExpert(site.layer, e, rank, errors))
    ranks = tuple(min(r, k) for r in site.ranks)
    return replace(site, ranks=ranks, lora_A=lora_a, lora_B=lora_b), capped
