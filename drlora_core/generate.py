"""A quick try of a trained adapter: fold it into its base model in memory and complete a few prompts.

Prompts are formatted exactly as training formatted the prompt side of an example (see `data.py`), so the model
sees what it learned to answer:
- plain (`prompt_completion` and `text` data): the tokenizer's leading special tokens, then the prompt;
- chat: the prompt as one user message, rendered by the tokenizer's chat template with the generation prompt, or,
  without a template, the plain chat format training used (`<|user|>\\n{prompt}\\n<|assistant|>\\n`).

Whether a run's data was chat is recorded as `data_format` in the adapter's drlora_ranks.json (final adapters of
runs trained since it was added); the service knows it from the job's training file. Absent both, prompts are plain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from drlora_core.adapter_files import StoredAdapter, read_adapter
from drlora_core.data import _encode, _special_prefix
from drlora_core.decode import Sampling, decode_ids
from drlora_core.export import merge_stored_into_base
from drlora_core.run import load_base, resolve_device, resolve_dtype

MAX_PROMPTS = 64


@dataclass(frozen=True)
class Generation:
    completions: list[str]
    model: str  # the base model the adapter was folded into
    chat: bool  # whether prompts went through the chat format
    sampling: Sampling


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool) -> list[int]:
    """The token ids training put before a completion whose prompt (or single user turn) is `prompt`."""
    if not chat:
        return [*_special_prefix(tokenizer), *_encode(tokenizer, [prompt])[0]]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return _encode(tokenizer, [str(text)])[0]
    return [*_special_prefix(tokenizer), *_encode(tokenizer, [f"<|user|>\n{prompt}\n<|assistant|>\n"])[0]]


def recorded_chat(stored: StoredAdapter) -> bool | None:
    """Whether the run's data was chat, as its drlora_ranks.json records it (None: not recorded)."""
    fmt = stored.ranks_doc.get("data_format")
    return None if fmt is None else fmt == "chat"


def base_model_of(stored: StoredAdapter, model: str | None) -> str:
    """`model` when given, else the base the adapter names (the demo's id or the directory it was trained from)."""
    name = model or stored.ranks_doc.get("base_model") or stored.base_model
    if not name:
        raise ValueError("the adapter does not name its base model; pass --model (a local model directory)")
    return str(name)


def load_adapted(stored: StoredAdapter, model: str, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer): the base loaded on `device` with the adapter's updates added into its weights."""
    base, tokenizer, _ = load_base(model, device, dtype)
    merge_stored_into_base(base, stored)
    return base.eval(), tokenizer


def complete(model: Any, tokenizer: Any, prompts: Sequence[str], sampling: Sampling, *, chat: bool) -> list[str]:
    if not prompts:
        raise ValueError("give at least one prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"at most {MAX_PROMPTS} prompts at a time, got {len(prompts)}")
    return decode_ids(model, tokenizer, [prompt_ids(tokenizer, p, chat=chat) for p in prompts], sampling)


def generate(adapter_dir: Path, prompts: Sequence[str], sampling: Sampling, *, model: str | None = None,
             chat: bool | None = None, device: str = "auto", dtype: str = "auto") -> Generation:
    """Load `adapter_dir` and its base (`model`, or the one it names), fold it in, complete `prompts`. `chat`
    None follows what the adapter records about its training data."""
    stored = read_adapter(adapter_dir)
    name = base_model_of(stored, model)
    target = resolve_device(device)
    loaded, tokenizer = load_adapted(stored, name, target, resolve_dtype(dtype, target))
    use_chat = bool(recorded_chat(stored)) if chat is None else chat
    return Generation(complete(loaded, tokenizer, prompts, sampling, chat=use_chat), name, use_chat, sampling)
