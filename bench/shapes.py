"""The models the speed benchmark runs: tiny families (CI), scaled-down real shapes (CPU), real shapes (GPU).

Real shapes are built from config with random weights (nothing is downloaded). Their routers are random too, so the
routing a real checkpoint would produce is imposed instead: `routing="balanced"` or `"zipf"` replaces each experts
module's top-k indices with a fixed draw (different per layer), while the router's own weights are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Routing = Literal["model", "balanced", "zipf"]
ShapeSet = Literal["tiny", "small", "real"]


@dataclass(frozen=True)
class RankSetup:
    """r_init < r_target < r_max; the frozen dr_lora map puts half the experts at r_init and half at
    2 * r_target - r_init, so it averages r_target and spans the range a grown map covers."""

    r_init: int
    r_target: int
    r_max: int

    def hetero_ranks(self, layers: int, experts: int) -> list[list[int]]:
        high = 2 * self.r_target - self.r_init
        return [[self.r_init if e % 2 == 0 else high for e in range(experts)] for _ in range(layers)]


# Tiny models have hidden 32 and expert width 16: the paper's 8/16/32 halved keeps every rank within the
# projections' dims with the paper's r_max / r_target = 2; small and real shapes use the paper's ranks.
TINY_RANKS = RankSetup(4, 8, 16)
PAPER_RANKS = RankSetup(8, 16, 32)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[torch.device, torch.dtype], nn.Module] = field(repr=False)
    batch: int
    seq_len: int
    ranks: RankSetup
    routing: Routing = "model"


def tiny_spec(family: str, quick: bool) -> ModelSpec:
    from drlora_core.tiny import build_tiny

    def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return build_tiny(family).to(device=device, dtype=dtype)

    # Tiny models allow 64 positions; 4 x 64 tokens keep a quick step in the tens of milliseconds on a CPU core.
    return ModelSpec(family, build, batch=4 if quick else 8, seq_len=64, ranks=TINY_RANKS)


# Scaled-down shapes keep a small vocabulary: the LM head is the same for every variant and would dominate a CPU step.
SMALL_VOCAB = 2048


def _vocab(scale: int, real: int) -> dict[str, Any]:
    if scale == 1:
        return {"vocab_size": real}
    return {"vocab_size": SMALL_VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _olmoe_config(scale: int, layers: int) -> Any:
    from transformers import OlmoeConfig

    # OLMoE-1B-7B: hidden 2048, expert width 1024, 16 layers, 64 experts, top-8, 16 heads, vocab 50304.
    return OlmoeConfig(**_vocab(scale, 50304), hidden_size=2048 // scale, intermediate_size=1024 // scale,
                       num_hidden_layers=layers, num_attention_heads=16 // scale, num_key_value_heads=16 // scale,
                       num_experts=64, num_experts_per_tok=8, max_position_embeddings=4096,
                       tie_word_embeddings=False)


def _qwen3_config(scale: int, layers: int) -> Any:
    from transformers import Qwen3MoeConfig

    # Qwen3-30B-A3B: hidden 2048, expert width 768, 48 layers, 128 experts, top-8, 32 q / 4 kv heads of 128.
    return Qwen3MoeConfig(**_vocab(scale, 151936), hidden_size=2048 // scale, intermediate_size=6144 // scale,
                          moe_intermediate_size=768 // scale, num_hidden_layers=layers,
                          num_attention_heads=32 // scale, num_key_value_heads=4,
                          head_dim=128,  # type: ignore[call-arg]  # accepted through **kwargs
                          num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[],
                          max_position_embeddings=4096, tie_word_embeddings=False)


def _from_config(make_config: Callable[[], Any], model_class: str) -> Callable[[torch.device, torch.dtype], nn.Module]:
    def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
        import transformers

        cls = getattr(transformers, model_class)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):  # initialise on the device: real shapes would be slow to move
                model = cls(make_config())
        finally:
            torch.set_default_dtype(previous)
        model.config.use_cache = False
        return model.eval()

    return build


def real_specs(routing: Routing, qwen_layers: int, seq_len: int) -> list[ModelSpec]:
    return [
        ModelSpec(f"olmoe-1b-7b/{routing}", _from_config(lambda: _olmoe_config(1, 16), "OlmoeForCausalLM"),
                  batch=1, seq_len=seq_len, ranks=PAPER_RANKS, routing=routing),
        ModelSpec(f"qwen3-30b-a3b[{qwen_layers}L]/{routing}",
                  _from_config(lambda: _qwen3_config(1, qwen_layers), "Qwen3MoeForCausalLM"),
                  batch=1, seq_len=seq_len, ranks=PAPER_RANKS, routing=routing),
    ]


def small_specs(routing: Routing, seq_len: int) -> list[ModelSpec]:
    """Real expert counts and top-k at a quarter of the widths and 2 layers: the real shapes' proportions at a
    size a CPU runs in seconds."""
    return [
        ModelSpec(f"olmoe/4-2L/{routing}", _from_config(lambda: _olmoe_config(4, 2), "OlmoeForCausalLM"),
                  batch=1, seq_len=seq_len, ranks=PAPER_RANKS, routing=routing),
        ModelSpec(f"qwen3-30b/4-2L/{routing}", _from_config(lambda: _qwen3_config(4, 2), "Qwen3MoeForCausalLM"),
                  batch=1, seq_len=seq_len, ranks=PAPER_RANKS, routing=routing),
    ]


def specs_for(shapes: ShapeSet, quick: bool, families: tuple[str, ...], routings: tuple[Routing, ...],
              qwen_layers: int, seq_len: int | None) -> list[ModelSpec]:
    if shapes == "tiny":
        return [tiny_spec(f, quick) for f in families]
    if shapes == "small":
        return [s for r in routings for s in small_specs(r, seq_len or 128)]
    return [s for r in routings for s in real_specs(r, qwen_layers, seq_len or 2048)]


def impose_routing(model: nn.Module, routing: Routing, seed: int = 0, zipf_s: float = 1.0) -> list[Any]:
    """Replace every experts module's top-k indices by a fixed draw; returns the hook handles."""
    if routing == "model":
        return []
    from drlora_core.families import find_experts

    handles = []
    for site in find_experts(model):
        probs = _expert_probs(site.num_experts, routing, seed + site.layer, zipf_s)
        handles.append(site.module.register_forward_pre_hook(_RoutingOverride(probs, seed + site.layer),
                                                             with_kwargs=True))
    return handles


def _expert_probs(num_experts: int, routing: Routing, seed: int, zipf_s: float) -> torch.Tensor:
    if routing == "balanced":
        return torch.full((num_experts,), 1.0 / num_experts)
    weights = 1.0 / torch.arange(1, num_experts + 1, dtype=torch.float64) ** zipf_s
    # the hot experts differ from layer to layer, as they do in trained models
    order = torch.randperm(num_experts, generator=torch.Generator().manual_seed(seed))
    return (weights / weights.sum())[order].float()


class _RoutingOverride:
    """Forward pre-hook: the same (tokens, k) draw every call with that shape, so every variant sees it."""

    def __init__(self, probs: torch.Tensor, seed: int) -> None:
        self.probs = probs
        self.seed = seed
        self.cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def __call__(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        names = ("hidden_states", "top_k_index", "top_k_weights")
        values = dict(zip(names, args, strict=False)) | kwargs
        index = values["top_k_index"]
        key = (index.shape[0], index.shape[1], str(index.device))
        if key not in self.cache:
            gen = torch.Generator().manual_seed(self.seed)
            draw = torch.multinomial(self.probs.expand(index.shape[0], -1), index.shape[1], replacement=False,
                                     generator=gen)
            self.cache[key] = draw.to(device=index.device, dtype=index.dtype)
        values["top_k_index"] = self.cache[key]
        return (), values
