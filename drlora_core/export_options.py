"""What an export of a trained adapter should look like (standard library only: the API validates these too).

- `layout`: `fused` (PEFT `target_parameters` on the fused 3-D experts, what training writes), `per_expert` (one
  LoRA per expert and projection under the checkpoint's own names, e.g. `experts.{e}.gate_proj`, padded to one
  rank; Mixtral, Qwen3-MoE, OLMoE and DeepSeek-V3: see `export_layouts`), or `merged` (the base model's own
  checkpoint with the LoRA folded into its weights).
- `dtype`: `fp32` or `bf16`; `auto` is fp32 for adapters and the base checkpoint's own dtype for a merged model.
- `base_model_name_or_path`: written into adapter_config.json (the Hub id or path the user will load the base
  from); None keeps the name the run was trained with.
- `max_rank`: experts above it are compressed by truncated SVD of B·A; `drlora_ranks.json` reports each one's
  relative Frobenius error. None keeps every expert's rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Layout = Literal["fused", "per_expert", "merged"]
ExportDtype = Literal["auto", "fp32", "bf16"]
LAYOUTS: tuple[str, ...] = ("fused", "per_expert", "merged")
DTYPES: tuple[str, ...] = ("auto", "fp32", "bf16")
MAX_NAME = 200


@dataclass(frozen=True)
class ExportOptions:
    layout: Layout = "fused"
    dtype: ExportDtype = "auto"
    base_model_name_or_path: str | None = None
    max_rank: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        name = self.base_model_name_or_path
        if name is not None and (not name.strip() or len(name) > MAX_NAME or any(c in name for c in "\n\r\0")):
            raise ValueError(f"base_model_name_or_path must be a Hub id or path of 1 to {MAX_NAME} characters "
                             "on one line")
        if self.max_rank is not None and (isinstance(self.max_rank, bool) or not 1 <= self.max_rank <= 4096):
            raise ValueError(f"max_rank must be an integer from 1 to 4096, got {self.max_rank!r}")
        if self.layout == "merged" and (self.max_rank is not None or name is not None):
            raise ValueError("a merged model has no LoRA rank and no base model name: drop max_rank and "
                             "base_model_name_or_path, or choose layout fused or per_expert")

    @property
    def is_default(self) -> bool:
        """The adapter exactly as training wrote it (served from the job's own artifact, no export needed)."""
        return self in (ExportOptions(), ExportOptions(dtype="fp32"))

    def key(self) -> str:
        """A stable identity for a stored export of these options (the artifact's name among a job's)."""
        parts: list[str] = [self.layout, self.dtype]
        if self.max_rank is not None:
            parts.append(f"r{self.max_rank}")
        if self.base_model_name_or_path is not None:
            parts.append(f"base={self.base_model_name_or_path}")
        return ";".join(parts)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
