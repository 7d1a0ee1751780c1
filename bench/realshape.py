"""Real-width models with random weights, saved as Hugging Face directories a `drlora train` can load.

`olmoe_width` is OLMoE-1B-7B at its real widths (hidden 2048, 64 experts of width 1024, top-8, vocabulary 50304)
with fewer layers; it carries the demo model's tokenizer (its ids fit any vocabulary of at least 1024). The
training file holds plain-text records of a fixed token length, so every batch is exactly batch x seq_len tokens
and a measured peak compares with an estimate made for that shape.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def save_olmoe_width(out_dir: Path, layers: int = 2, seed: int = 0, dtype: str = "float32") -> Path:
    import torch
    from transformers import OlmoeForCausalLM

    from bench.shapes import _olmoe_config
    from drlora_core.assets import demo_model_dir

    torch.manual_seed(seed)
    config = _olmoe_config(1, layers)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, None, 1
    with torch.device("meta"):
        model = OlmoeForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():  # a quick random init: the run measures memory and mechanics, not quality
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out_dir)
    del model
    for name in TOKENIZER_FILES:
        src = demo_model_dir() / name
        if src.exists():
            shutil.copy(src, out_dir / name)
    return out_dir


def write_long_text(path: Path, records: int, words: int) -> Path:
    """`records` plain-text lines of `words` words each: longer than any max_seq_len used with them, so the data
    loader truncates every example to exactly max_seq_len tokens (every batch is batch x seq_len)."""
    vocabulary = ["the", "model", "routes", "every", "token", "to", "a", "few", "experts", "and", "each", "expert", "learns", "a", "part", "of", "the", "task"]
    lines = [json.dumps({"text": " ".join(vocabulary[(r + j) % len(vocabulary)] for j in range(words))})
             for r in range(records)]
    path.write_text("\n".join(lines) + "\n")
    return path


def measure_train_peak(model: str, out_dir: Path, train_args: list[str]) -> dict[str, object]:
    """Run `drlora train` in a child process; its peak RSS (ru_maxrss of the children) and its output."""
    import resource
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "drlora_cli.main", "train", "--model", model, "--out", str(out_dir), *train_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"drlora train failed ({proc.returncode}): {proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak_rss_bytes": peak, "seconds": time.perf_counter() - started, "stdout": proc.stdout}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="save a real-width OLMoE model with random weights")
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    save_olmoe_width(args.out, args.layers)
