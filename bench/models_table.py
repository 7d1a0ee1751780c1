"""docs/models.md's table: the estimator on five published configs (tests/fixtures/model_configs) at the paper's
settings on one GPU. Standard library only: `python -m bench.models_table`."""

from __future__ import annotations

from pathlib import Path

from drlora_core.estimate import GIB, RunShape, estimate
from drlora_core.model_facts import read_model_facts

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "model_configs"
MODELS = {"OLMoE-1B-7B": "olmoe-1b-7b", "Qwen3-30B-A3B": "qwen3-30b-a3b", "Mixtral-8x7B": "mixtral-8x7b",
          "GPT-OSS-20B": "gpt-oss-20b", "DeepSeek-V2-Lite": "deepseek-v2-lite"}
GPUS_GB = (24, 48, 80, 141)
HEADROOM = 0.95  # leave 5% of the card for the allocator's fragmentation


def paper_shape(checkpointing: bool, batch_size: int = 4, seq_len: int = 2048) -> RunShape:
    return RunShape(batch_size=batch_size, seq_len=seq_len, r_max=32, dtype="bf16",
                    gradient_checkpointing=checkpointing, device="cuda", lora_dropout=0.1)


def fits(peak_bytes: int) -> str:
    cards = [f"{gb}" for gb in GPUS_GB if peak_bytes <= HEADROOM * gb * 1e9]
    return ", ".join(cards) if cards else "none (shard it)"


def table(batch_size: int = 4, seq_len: int = 2048) -> str:
    lines = ["| model | parameters | weights (bf16) | LoRA r_max 32 + grads + AdamW | peak, no checkpointing | "
             "peak, checkpointing | fits (GB cards), no ckpt | fits, ckpt | FLOPs/token (step, ckpt) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, folder in MODELS.items():
        facts = read_model_facts(FIXTURES / folder)
        full = estimate(facts, paper_shape(False, batch_size, seq_len))
        ckpt = estimate(facts, paper_shape(True, batch_size, seq_len))
        lora = sum(full.parts.get(k, 0) for k in ("lora_banks", "gradients", "adamw_state"))
        lines.append(
            f"| {name} | {facts.total_params / 1e9:.1f} B | {full.parts['base_weights'] / GIB:.1f} GiB | "
            f"{lora / GIB:.1f} GiB | {full.peak_bytes / GIB:.1f} GiB | {ckpt.peak_bytes / GIB:.1f} GiB | "
            f"{fits(full.peak_bytes)} | {fits(ckpt.peak_bytes)} | {ckpt.flops_per_token['step'] / 1e9:.1f} G |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
