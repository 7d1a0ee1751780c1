"""What a model's config.json says about its size, read with the standard library only (no torch).

Supported `model_type`s: olmoe, qwen2_moe (Qwen1.5-MoE), qwen3_moe, mixtral, gpt_oss, deepseek_v2, deepseek_v3 (the
demo model is a qwen3_moe). `read_model_facts(dir)` returns a frozen `ModelFacts`; a missing or unknown field is a
`ModelFactsError` naming the file and the key. Parameter counts follow transformers 5's modules (tested against
`sum(p.numel())` for every family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_TYPES = ("olmoe", "qwen2_moe", "qwen3_moe", "mixtral", "gpt_oss", "deepseek_v2", "deepseek_v3")
EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
TOP_K_KEYS = ("num_experts_per_tok", "experts_per_token")
# families whose experts' width is `moe_intermediate_size` (their `intermediate_size` is the dense MLP's)
MOE_WIDTH_TYPES = ("qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")


class ModelFactsError(ValueError):
    """config.json lacks what the estimate needs, or names a family we do not support."""


@dataclass(frozen=True)
class Attention:
    heads: int
    kv_heads: int
    head_dim: int
    # DeepSeek's multi-head latent attention (0 when the model uses plain attention)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    bias: bool = False  # q/k/v (and o for GPT-OSS) biases

    @property
    def latent(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def q_width(self) -> int:
        return self.heads * (self.qk_nope_head_dim + self.qk_rope_head_dim if self.latent else self.head_dim)

    @property
    def kv_width(self) -> int:
        """Width of k plus v per token after projection."""
        if self.latent:
            return self.heads * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
        return 2 * self.kv_heads * self.head_dim

    @property
    def out_width(self) -> int:
        return self.heads * (self.v_head_dim if self.latent else self.head_dim)

    def params(self, hidden: int) -> int:
        if self.latent:
            q = (hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.q_width
                 if self.q_lora_rank else hidden * self.q_width)
            kv = (hidden * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
                  + self.kv_lora_rank * self.heads * (self.qk_nope_head_dim + self.v_head_dim))
            return q + kv + self.out_width * hidden
        weights = hidden * (self.q_width + self.kv_width) + self.out_width * hidden
        return weights + (self.q_width + self.kv_width if self.bias else 0)


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    layers: int
    moe_layers: int
    hidden: int
    experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int  # summed width of the shared experts (0: none)
    dense_intermediate: int  # width of the dense MLP in non-MoE layers (0: every layer is MoE)
    vocab: int
    max_position_embeddings: int
    attention: Attention
    tie_word_embeddings: bool
    expert_bias: bool  # GPT-OSS: biases on the expert projections and the router
    checkpoint_dtype_bytes: int = 2  # bytes per weight in the checkpoint files (config `dtype` / `torch_dtype`)

    def __post_init__(self) -> None:
        for name in ("layers", "moe_layers", "hidden", "experts", "top_k", "expert_intermediate", "vocab"):
            if getattr(self, name) < 1:
                raise ModelFactsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.top_k > self.experts:
            raise ModelFactsError(f"top_k {self.top_k} exceeds the {self.experts} experts")

    @property
    def expert_params(self) -> int:
        """One expert: gate, up and down projections (and their biases for GPT-OSS)."""
        h, i = self.hidden, self.expert_intermediate
        return 3 * h * i + ((2 * i + h) if self.expert_bias else 0)

    @property
    def router_params(self) -> int:
        """One MoE layer's router (with GPT-OSS's bias; DeepSeek-V3's correction bias is a buffer)."""
        return self.hidden * self.experts + (self.experts if self.expert_bias else 0)

    @property
    def moe_layer_params(self) -> int:
        shared = 3 * self.hidden * self.shared_intermediate
        shared_gate = self.hidden if self.model_type == "qwen2_moe" and self.shared_intermediate else 0
        return self.experts * self.expert_params + self.router_params + shared + shared_gate

    @property
    def total_params(self) -> int:
        h = self.hidden
        per_layer = self.attention.params(h) + 2 * h + _qk_norm_params(self)
        dense_layers = self.layers - self.moe_layers
        embeddings = self.vocab * h * (1 if self.tie_word_embeddings else 2)
        return (self.layers * per_layer + self.moe_layers * self.moe_layer_params
                + dense_layers * 3 * h * self.dense_intermediate + embeddings + h)

    @property
    def active_params_per_token(self) -> int:
        """Weights one token passes through (top-k experts, not all of them), LM head included."""
        h = self.hidden
        routed = self.moe_layers * (self.top_k * self.expert_params + self.router_params
                                    + 3 * h * self.shared_intermediate)
        dense = (self.layers - self.moe_layers) * 3 * h * self.dense_intermediate
        return self.layers * self.attention.params(h) + routed + dense + self.vocab * h

    def lora_params_per_rank(self) -> int:
        """LoRA parameters per unit of rank over every routed expert: fused gate_up (in H, out 2I) and down
        (in I, out H) each hold an A (r x in) and a B (out x r)."""
        h, i = self.hidden, self.expert_intermediate
        return self.moe_layers * self.experts * ((h + 2 * i) + (i + h))


def read_model_facts(model_dir: str | Path) -> ModelFacts:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFactsError(f"{path} not found: point at a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelFactsError(f"{path} is not valid JSON: {err}") from err
    return facts_from_config(config, str(path))


def facts_from_config(config: dict[str, Any], source: str = "config.json") -> ModelFacts:
    cfg = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    model_type = str(cfg.get("model_type", ""))
    if model_type not in SUPPORTED_TYPES:
        raise ModelFactsError(f"{source}: model_type {model_type!r} is not supported; supported: "
                              f"{', '.join(SUPPORTED_TYPES)}")

    def need(*keys: str) -> Any:
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
        raise ModelFactsError(f"{source}: {model_type} config needs {' or '.join(keys)}")

    hidden, layers, heads = int(need("hidden_size")), int(need("num_hidden_layers")), int(need("num_attention_heads"))
    moe_flags = _moe_layer_flags(cfg, model_type, layers)
    moe_width_key = "moe_intermediate_size" if model_type in MOE_WIDTH_TYPES else "intermediate_size"
    expert_width = int(need(moe_width_key))
    return ModelFacts(
        model_type=model_type, layers=layers, moe_layers=sum(moe_flags), hidden=hidden,
        experts=int(need(*EXPERTS_KEYS)), top_k=int(need(*TOP_K_KEYS)), expert_intermediate=expert_width,
        shared_intermediate=_shared_width(cfg, model_type, expert_width),
        dense_intermediate=int(cfg.get("intermediate_size") or 0) if not all(moe_flags) else 0,
        vocab=int(need("vocab_size")), max_position_embeddings=int(need("max_position_embeddings")),
        attention=_attention(cfg, model_type, hidden, heads), tie_word_embeddings=bool(cfg.get("tie_word_embeddings")),
        expert_bias=model_type == "gpt_oss",
        checkpoint_dtype_bytes=4 if str(cfg.get("dtype") or cfg.get("torch_dtype")) == "float32" else 2,
    )


def _moe_layer_flags(cfg: dict[str, Any], model_type: str, layers: int) -> list[bool]:
    if model_type in ("qwen2_moe", "qwen3_moe"):
        step = int(cfg.get("decoder_sparse_step") or 1)
        dense = set(cfg.get("mlp_only_layers") or [])
        return [i not in dense and (i + 1) % step == 0 for i in range(layers)]
    if model_type in ("deepseek_v2", "deepseek_v3"):
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(cfg.get("moe_layer_freq") or 1)
        return [i >= first_dense and i % freq == 0 for i in range(layers)]
    return [True] * layers


def _shared_width(cfg: dict[str, Any], model_type: str, expert_width: int) -> int:
    if model_type == "qwen2_moe":
        return int(cfg.get("shared_expert_intermediate_size") or 0)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return int(cfg.get("n_shared_experts") or 0) * expert_width
    return 0


def _attention(cfg: dict[str, Any], model_type: str, hidden: int, heads: int) -> Attention:
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return Attention(heads, kv_heads, head_dim, q_lora_rank=int(cfg.get("q_lora_rank") or 0),
                         kv_lora_rank=int(cfg["kv_lora_rank"]), qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
                         qk_nope_head_dim=int(cfg["qk_nope_head_dim"]), v_head_dim=int(cfg["v_head_dim"]))
    bias = model_type == "qwen2_moe" or bool(cfg.get("attention_bias"))
    return Attention(heads, kv_heads, head_dim, bias=bias)


def _qk_norm_params(facts: ModelFacts) -> int:
    a = facts.attention
    if facts.model_type == "olmoe":  # norms over the full q and k widths
        return a.heads * a.head_dim + a.kv_heads * a.head_dim
    if facts.model_type == "qwen3_moe":  # per-head norms
        return 2 * a.head_dim
    if facts.model_type == "gpt_oss":  # attention sinks, and the o_proj bias
        return a.heads + (facts.hidden if a.bias else 0)
    return 0
