"""Pre-flight estimate of a run's peak memory (by part) and FLOPs per token, with the standard library only.

From `ModelFacts` and the run's shape (batch, sequence length, r_max, compute dtype, checkpointing, device). The
parts mirror what the engine holds at the peak of a step (the backward of the first layer):
- base weights in the compute dtype; LoRA banks at r_max, their gradients and AdamW's two moments in fp32;
- with `train_router`, the routers' fp32 master copy, gradients and moments;
- activations: without checkpointing every layer's saved tensors; with it, each layer's input plus one layer's
  saved tensors while it is recomputed;
- the backward's working set (one layer's activation gradients);
- the loss: label rows of the last hidden state and one 64 MiB chunk of fp32 logits, its softmax and gradient;
- the runtime: on a CPU the process's own resident size (Python, torch, transformers), on CUDA its context.
On a CPU, transformers memory-maps the checkpoint: weights whose dtype matches the file stay views of the mapping,
which keeps every page the load touched resident (and counted in RSS) for the whole run, beside the converted
copies (the fused experts). So there `load_peak` = runtime + weights + the mapped files, and `peak_bytes` is the
larger of the two peaks. On CUDA the weights are read straight onto the device and the mapping is transient.
Validated against measured peaks (docs/benchmarks.md): CPU RSS of `drlora train`, CUDA `max_memory_allocated`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from drlora_core.config import RunConfig
from drlora_core.model_facts import ModelFacts

DTYPE_BYTES = {"fp32": 4, "bf16": 2}
LOSS_CHUNK_BYTES = 64 * 2**20  # must equal drlora_core.loss.LOSS_CHUNK_BYTES (a test pins them together)
CPU_RUNTIME_BYTES = 380 * 2**20  # resident Python, torch, transformers, tokenizers: `drlora train` on the demo peaks at 412 MiB
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context and kernels: outside max_memory_allocated, inside nvidia-smi
GIB = 2**30


@dataclass(frozen=True)
class RunShape:
    batch_size: int = 8
    seq_len: int = 512
    r_max: int = 32
    dtype: str = "bf16"  # fp32 | bf16
    gradient_checkpointing: bool = False
    device: str = "cuda"  # cpu | cuda
    train_router: bool = False
    lora_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "r_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


def run_shape(config: RunConfig, device: str) -> RunShape:
    """The shape of a resolved run on a `device` ("cpu" or "cuda"): the one mapping from RunConfig to RunShape that
    `drlora estimate`, the API and the worker share. dtype "auto" is bf16 on CUDA and fp32 on a CPU (as the engine's
    `resolve_dtype`); a `gradient_checkpointing` still "auto" counts as off (what `autoconfig` resolves it to
    unless the service's pre-flight turns it on)."""
    train = config.train
    dtype = train.dtype if train.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    return RunShape(batch_size=train.resolved_batch_size, seq_len=train.max_seq_len, r_max=config.lora.ranks[2],
                    dtype=dtype, gradient_checkpointing=train.gradient_checkpointing is True, device=device,
                    train_router=train.train_router, lora_dropout=config.lora.dropout)


def device_kind(device: str) -> str:
    """cpu or cuda, from a device setting (auto, cpu, cuda, cuda:N); auto guesses cuda when nvidia-smi is on PATH,
    as no torch is loaded here to ask."""
    if device == "auto":
        return "cuda" if shutil.which("nvidia-smi") else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class Estimate:
    parts: dict[str, int]
    flops_per_token: dict[str, int] = field(default_factory=dict)
    load_peak: int = 0  # CPU only: while the checkpoint is mapped and copied

    @property
    def train_peak(self) -> int:
        return sum(self.parts.values())

    @property
    def peak_bytes(self) -> int:
        return max(self.train_peak, self.load_peak)

    @property
    def device_bytes(self) -> int:
        """What the device allocator itself reports (CUDA's max_memory_allocated leaves out the context)."""
        return self.train_peak - self.parts.get("runtime", 0)

    def to_dict(self) -> dict[str, object]:
        return {"peak_bytes": self.peak_bytes, "peak_gib": round(self.peak_bytes / GIB, 3),
                "train_peak_bytes": self.train_peak, "load_peak_bytes": self.load_peak,
                "device_bytes": self.device_bytes, "parts": dict(self.parts),
                "flops_per_token": dict(self.flops_per_token)}


def estimate(facts: ModelFacts, shape: RunShape) -> Estimate:
    b = DTYPE_BYTES[shape.dtype]
    lora = facts.lora_params_per_rank() * shape.r_max * 4
    router = facts.moe_layers * facts.router_params * 4 if shape.train_router else 0
    per_layer = _layer_activation_bytes(facts, shape, b) * shape.tokens
    kept = (facts.layers * shape.tokens * facts.hidden * b + per_layer if shape.gradient_checkpointing
            else facts.layers * per_layer)
    parts = {
        "base_weights": facts.total_params * b,
        "lora_banks": lora,
        "gradients": lora + router,
        "adamw_state": 2 * (lora + router),
        "router_master": router,
        "activations": kept,
        "backward_transient": per_layer,
        "logits_and_loss": _loss_bytes(facts, shape, b),
        "runtime": CPU_RUNTIME_BYTES if shape.device == "cpu" else CUDA_CONTEXT_BYTES,
    }
    load_peak = (parts["runtime"] + parts["base_weights"] + facts.total_params * facts.checkpoint_dtype_bytes
                 if shape.device == "cpu" else 0)
    return Estimate({k: v for k, v in parts.items() if v}, flops_per_token(facts, shape), load_peak)


def _layer_activation_bytes(facts: ModelFacts, shape: RunShape, b: int) -> int:
    """Bytes one MoE layer saves for its backward, per token (the base weights are frozen: a linear keeps no
    input for its own sake, only what an elementwise op, attention, or a LoRA weight gradient needs)."""
    h, i, k, a = facts.hidden, facts.expert_intermediate, facts.top_k, facts.attention
    attention = b * (2 * h + a.q_width + a.kv_width + a.out_width) + 4 * a.heads
    if shape.device == "cpu":  # the CPU attention kernels keep the (heads, seq) score rows in fp32
        attention += 4 * a.heads * shape.seq_len
    router = 2 * 4 * facts.experts
    experts = b * k * (h + 2 * i + i + h)  # sorted input, gate_up output, activation, down output
    if shape.lora_dropout > 0:
        experts += (b + 1) * k * (h + i)  # dropped-out copies of both LoRA inputs and their masks
    lora = 4 * k * shape.r_max * 2 * 2
    shared = b * 4 * facts.shared_intermediate
    return attention + router + experts + lora + shared


def _loss_bytes(facts: ModelFacts, shape: RunShape, b: int) -> int:
    hidden = shape.tokens * facts.hidden * b * 2  # the last hidden state, and the label rows gathered from it
    rows = min(shape.tokens, max(1, LOSS_CHUNK_BYTES // (4 * facts.vocab)))
    chunk = rows * facts.vocab * (4 * 3 + b)  # logits in the compute dtype, fp32 copy, softmax, gradient
    return hidden + chunk


def flops_per_token(facts: ModelFacts, shape: RunShape) -> dict[str, int]:
    """Forward, backward and whole-step FLOPs per token (2 per multiply-add). The frozen base needs input
    gradients only (1x its forward); LoRA needs input and weight gradients (2x); checkpointing adds a forward."""
    a = facts.attention
    attention_scores = facts.layers * 2 * 2 * shape.seq_len // 2 * (a.q_width + a.out_width) // 2
    base = 2 * facts.active_params_per_token + attention_scores
    h, i = facts.hidden, facts.expert_intermediate
    lora = 2 * facts.moe_layers * facts.top_k * shape.r_max * ((h + 2 * i) + (i + h))
    forward = base + lora
    backward = base + 2 * lora
    recompute = forward if shape.gradient_checkpointing else 0
    return {"forward": forward, "backward": backward, "recompute": recompute,
            "step": forward + backward + recompute}


def report(facts: ModelFacts, shape: RunShape, est: Estimate) -> dict[str, object]:
    """The estimate as `drlora estimate --json` prints it and the API's dry run answers it."""
    return {**est.to_dict(), "model_type": facts.model_type, "total_params": facts.total_params,
            "device": shape.device, "dtype": shape.dtype, "gradient_checkpointing": shape.gradient_checkpointing}


def format_table(est: Estimate) -> str:
    width = max(len(k) for k in est.parts) + 2
    lines = [f"{'part':<{width}}{'GiB':>10}"]
    lines += [f"{name:<{width}}{value / GIB:>10.3f}" for name, value in est.parts.items()]
    lines.append(f"{'training peak':<{width}}{est.train_peak / GIB:>10.3f}")
    if est.load_peak:
        lines.append(f"{'load peak':<{width}}{est.load_peak / GIB:>10.3f}")
    lines.append(f"{'peak':<{width}}{est.peak_bytes / GIB:>10.3f}")
    flops = est.flops_per_token
    if flops:
        lines.append(f"FLOPs per token: forward {flops['forward']:.3e}, step {flops['step']:.3e}")
    return "\n".join(lines)
