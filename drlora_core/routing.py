"""Routing frequency: how many (non-padding) tokens each layer's own router sent to each expert.

Counts accumulate on the device during the training forwards of one optimizer step and are folded into an EMA by
the trainer. A forward is counted once even when gradient checkpointing recomputes it during backward: every
training forward gets a fresh id, and a layer counts only the first time it sees that id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class RoutingState:
    """Shared by every adapted layer of one model."""

    counts: torch.Tensor  # (L, E) float, this step's routed-token counts
    weighted: bool = False  # add the routing weight instead of 1 per assignment
    counting: bool = False
    forward_id: int = 0
    token_mask: torch.Tensor | None = None  # (tokens,) bool over the flattened batch; None = every token counts
    last_counted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last_counted = [-1] * self.counts.shape[0]

    def record(self, layer: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor | None) -> None:
        """Add one layer's top-k assignments (tokens, k) to this step's counts; no host sync."""
        if not self.counting or self.last_counted[layer] == self.forward_id:
            return
        self.last_counted[layer] = self.forward_id
        index = top_k_index.reshape(top_k_index.shape[0], -1)
        if self.weighted and top_k_weights is not None:
            weight = top_k_weights.reshape(index.shape).detach().to(self.counts.dtype)
        else:
            weight = torch.ones(index.shape, dtype=self.counts.dtype, device=index.device)
        if self.token_mask is not None:
            if self.token_mask.shape[0] != index.shape[0]:
                raise ValueError(f"token mask has {self.token_mask.shape[0]} entries for {index.shape[0]} tokens")
            weight = weight * self.token_mask[:, None].to(weight.dtype)
        self.counts[layer].index_add_(0, index.reshape(-1), weight.reshape(-1))

    @contextmanager
    def training_forward(self, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """Count the routing of the forward run inside this block (and only that one)."""
        self.forward_id += 1
        self.counting = True
        self.token_mask = attention_mask.reshape(-1).bool() if attention_mask is not None else None
        try:
            yield
        finally:
            self.counting = False
            self.token_mask = None

    def take_counts(self) -> torch.Tensor:
        """This step's counts; resets them for the next step."""
        counts = self.counts.clone()
        self.counts.zero_()
        return counts
