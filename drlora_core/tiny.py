"""Tiny randomly initialised MoE models of every supported family, built from config (tests, benchmarks, demos).

Every dimension is a multiple of 8. `build_tiny(family)` returns a causal LM in float32 with 8 experts, top-2.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "granitemoe",
                             "module_list")
COMMON: dict[str, Any] = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _mixtral() -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    return MixtralForCausalLM(MixtralConfig(**COMMON, intermediate_size=16, num_local_experts=8,
                                            num_experts_per_tok=2, head_dim=8))


def _qwen2_moe() -> nn.Module:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    return Qwen2MoeForCausalLM(Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16,
                                              shared_expert_intermediate_size=32, num_experts=8,
                                              num_experts_per_tok=2, decoder_sparse_step=1))


def _qwen3_moe() -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return Qwen3MoeForCausalLM(Qwen3MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=16,  # type: ignore[call-arg]
                                              num_experts=8, num_experts_per_tok=2, head_dim=8,
                                              decoder_sparse_step=1, mlp_only_layers=[]))


def _olmoe() -> nn.Module:
    from transformers import OlmoeConfig, OlmoeForCausalLM

    return OlmoeForCausalLM(OlmoeConfig(**COMMON, intermediate_size=16, num_experts=8, num_experts_per_tok=2))


def _deepseek_v3() -> nn.Module:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = {**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4}
    return DeepseekV3ForCausalLM(DeepseekV3Config(
        **cfg, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, rope_interleave=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))


def _gpt_oss() -> nn.Module:
    from transformers import GptOssConfig, GptOssForCausalLM

    return GptOssForCausalLM(GptOssConfig(**COMMON, intermediate_size=16, num_local_experts=8,
                                          num_experts_per_tok=2, head_dim=8, sliding_window=16,
                                          layer_types=["sliding_attention", "full_attention"]))


def _granitemoe() -> nn.Module:
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    return GraniteMoeForCausalLM(GraniteMoeConfig(**COMMON, intermediate_size=16, num_local_experts=8,
                                                  num_experts_per_tok=2))


class _ListExpert(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _ListMoeBlock(nn.Module):
    """Older-style sparse block: a linear router and a ModuleList of experts, looped in Python."""

    def __init__(self, hidden: int, inter: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleList(_ListExpert(hidden, inter) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = self.gate(flat).softmax(dim=-1)
        weights, index = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(index == e)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None])
        return out.reshape(shape)


class ListMoeForCausalLM(nn.Module):
    """A minimal causal LM with ModuleList experts; it answers like a transformers model (`.logits`)."""

    def __init__(self, vocab: int = 128, hidden: int = 32, inter: int = 16, layers: int = 2,
                 num_experts: int = 8, top_k: int = 2) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_experts_per_tok=top_k, vocab_size=vocab, hidden_size=hidden,
                                      use_cache=False)
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(_ListMoeBlock(hidden, inter, num_experts, top_k) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.lm_head(self.hidden_states(input_ids)))

    def hidden_states(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h)

    def get_decoder(self) -> Callable[..., SimpleNamespace]:
        """What `transformers`' models answer: a callable returning `last_hidden_state`."""
        return lambda **kwargs: SimpleNamespace(last_hidden_state=self.hidden_states(**kwargs))

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3, "gpt_oss": _gpt_oss, "granitemoe": _granitemoe, "module_list": ListMoeForCausalLM,
}


def build_tiny(family: str, seed: int = 0) -> nn.Module:
    """A tiny float32 model of `family` in eval mode, with random (not zero) router and expert weights."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model = BUILDERS[family]().float()
    with torch.no_grad():  # some families initialise routers or biases to zero: randomise so routing varies
        for name, p in model.named_parameters():
            if any(k in name for k in ("gate", "router", "experts")):
                p.normal_(0.0, 0.2)
    return model.eval()
