"""The per-expert checkpoint names of a fused transformers 5 experts parameter, read from transformers' own
conversion mapping (`get_checkpoint_conversion_mapping(model_type)`), not from a table of ours.

transformers 5 loads per-expert checkpoints (`...experts.{e}.gate_proj.weight`, Mixtral's
`...block_sparse_moe.experts.{e}.w1.weight`) into fused 3-D parameters with a `WeightConverter`:
`MergeModulelist(dim=0)` stacks the experts and `Concatenate(dim=1)` joins gate and up along the output rows, in
the converter's source order. We invert exactly that: a family whose experts converter does anything else (GPT-OSS
and Granite-MoE ship fused checkpoints and have no per-expert names at all) is refused.

PEFT re-fuses per-expert LoRA at load time only for the model types its own table
(`peft.utils.transformers_weight_conversion._MODEL_TO_CONVERSION_PATTERN` / `_MOE_FUSED_TARGETS`, private) knows:
in PEFT 0.21 that is Mixtral and the types mapped onto the qwen2_moe pattern (Qwen3-MoE, OLMoE, DeepSeek-V3) but
not qwen2_moe itself, whose per-expert LoRA PEFT silently drops. We read that table rather than copy it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class PerExpertUnsupported(ValueError):
    """The model family has no per-expert checkpoint layout transformers can convert."""


@dataclass(frozen=True)
class SplitNames:
    """How one fused parameter splits: `modules[i]` with `{e}` for the expert index, each taking `1/len(modules)`
    of the fused output rows, in order."""

    modules: tuple[str, ...]  # e.g. ("model.layers.0.block_sparse_moe.experts.{e}.w1", "...{e}.w3")

    def module(self, part: int, expert: int) -> str:
        return self.modules[part].replace("{e}", str(expert))

    @property
    def leaf_names(self) -> tuple[str, ...]:
        return tuple(m.rpartition(".")[2] for m in self.modules)


def per_expert_families() -> tuple[str, ...]:
    """The model types among drlora's families whose per-expert layout transformers and PEFT convert."""
    from drlora_core.tiny import FAMILIES

    return tuple(f for f in FAMILIES if f != "module_list" and _experts_converters(f) and _peft_converts(f))


def split_names(model_type: str, path: str, fused: str) -> SplitNames:
    """Per-expert module names (checkpoint paths, `{e}` for the expert) of the fused parameter `{path}.{fused}`."""
    converters = _experts_converters(model_type)
    if not converters or not _peft_converts(model_type):
        raise PerExpertUnsupported(
            f"model type {model_type!r} has no per-expert layout that transformers and PEFT both convert; the "
            f"per_expert layout works for {', '.join(per_expert_families())}: export layout fused instead")
    key = f"{path}.{fused}"
    for converter in converters:
        for target in converter.target_patterns:
            match = re.search(f"(?:{target})$", key)
            if match is None:
                continue
            prefix = key[:match.start()]
            modules = tuple(_unrename(model_type, prefix + s.replace("*", "{e}").removesuffix(".weight"))
                            for s in converter.source_patterns)
            return SplitNames(modules)
    raise PerExpertUnsupported(f"transformers' conversion mapping for {model_type!r} names no checkpoint source "
                               f"for {key}; export layout fused")


def _peft_converts(model_type: str) -> bool:
    """Whether PEFT converts a per-expert LoRA of `model_type` into its fused experts when loading it."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:  # a PEFT without transformers-5 weight conversion
        return False
    pattern = getattr(conversion, "_MODEL_TO_CONVERSION_PATTERN", {}).get(model_type)
    return pattern is not None and bool(getattr(conversion, "_MOE_FUSED_TARGETS", {}).get(pattern))


def _experts_converters(model_type: str) -> list[Any]:
    """The mapping's expert converters, or [] when any of them is not a plain stack (and concatenation)."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import Concatenate, MergeModulelist, WeightConverter

    mapping = get_checkpoint_conversion_mapping(model_type) or []
    converters = [c for c in mapping if isinstance(c, WeightConverter)
                  and any(re.search(r"experts\.(gate_up_proj|down_proj|up_proj)$", t) for t in c.target_patterns)]
    for c in converters:
        ops = list(c.operations)
        plain = (len(ops) >= 1 and isinstance(ops[0], MergeModulelist) and ops[0].dim == 0
                 and all(isinstance(op, Concatenate) and op.dim == 1 for op in ops[1:]) and len(ops) <= 2
                 and (len(ops) == 2) == (len(c.source_patterns) > 1))
        if not plain or not all("*" in s for s in c.source_patterns):
            return []
    return converters


def _unrename(model_type: str, key: str) -> str:
    """Undo the mapping's plain renamings (Mixtral's `.block_sparse_moe.` -> `.mlp.`) with transformers' own
    reverse transforms."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    mapping = get_checkpoint_conversion_mapping(model_type) or []
    for renaming in reversed(mapping):
        if isinstance(renaming, WeightRenaming) and not isinstance(renaming, WeightConverter):
            key, _ = renaming.reverse_transform().rename_source_key(key.replace("{e}", "0000"))
            key = key.replace("0000", "{e}")
    return key
