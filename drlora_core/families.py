"""Find the routed-experts modules of a transformers 5 model and describe their projections.

Two layouts are supported:
- fused: the `@use_experts_implementation` classes of transformers 5 (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
  DeepSeek-V3, GPT-OSS, Granite-MoE, ...) hold 3-D parameters `gate_up_proj`/`up_proj` and `down_proj` and receive
  the router's top-k from their parent block. GPT-OSS stores them transposed (`[E, in, out]`) with biases.
- module list: an `nn.ModuleList` of experts, each holding one `nn.Linear` per projection, beside an `nn.Linear`
  router in the parent block (older and custom models).
Shared experts are never adapted: they are plain MLPs outside the experts module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

FUSED_PROJECTIONS = ("gate_up_proj", "up_proj", "down_proj")
LINEAR_PROJECTIONS = ("gate_proj", "up_proj", "down_proj", "w1", "w3", "w2", "fc1", "fc2")
ROUTER_NAMES = ("gate", "router")


class UnsupportedModelError(ValueError):
    """The model has no experts module this engine can adapt."""


@dataclass(frozen=True)
class Projection:
    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class ExpertsSite:
    """One MoE layer's routed experts."""

    layer: int  # index among the model's MoE layers, 0-based
    path: str  # dotted module path of the experts module
    module: nn.Module
    style: Literal["fused", "module_list"]
    num_experts: int
    projections: tuple[Projection, ...]
    router: nn.Module | None
    router_path: str | None


def find_experts(model: nn.Module) -> list[ExpertsSite]:
    """Every routed-experts module in model order; raises `UnsupportedModelError` naming what was found."""
    found: list[tuple[str, nn.Module, str, tuple[Projection, ...], int]] = []
    for path, module in model.named_modules():
        fused = _fused_projections(module)
        if fused:
            found.append((path, module, "fused", fused, int(getattr(module, "num_experts", 0) or
                                                             _param(module, fused[0].name).shape[0])))
            continue
        listed = _module_list_projections(module)
        if listed:
            found.append((path, module, "module_list", listed, len(module)))  # type: ignore[arg-type]
    if not found:
        raise UnsupportedModelError(_unsupported_message(model))
    modules = dict(model.named_modules())
    sites = []
    for layer, (path, module, style, projections, num_experts) in enumerate(found):
        router_path = _router_path(modules, path, num_experts)
        sites.append(ExpertsSite(layer, path, module, style, num_experts, projections,  # type: ignore[arg-type]
                                 modules[router_path] if router_path else None, router_path))
    return sites


def _param(module: nn.Module, name: str) -> nn.Parameter:
    return module._parameters[name]  # type: ignore[return-value]


def _fused_projections(module: nn.Module) -> tuple[Projection, ...]:
    if not hasattr(module, "is_transposed"):  # set by transformers' @use_experts_implementation
        return ()
    transposed = bool(module.is_transposed)
    projections = []
    for name in FUSED_PROJECTIONS:
        param = module._parameters.get(name)
        if param is None or param.dim() != 3:
            continue
        _, d1, d2 = param.shape
        in_f, out_f = (d1, d2) if transposed else (d2, d1)
        projections.append(Projection(name, int(in_f), int(out_f)))
    has_down = any(p.name == "down_proj" for p in projections)
    return tuple(projections) if has_down and len(projections) >= 2 else ()


def _module_list_projections(module: nn.Module) -> tuple[Projection, ...]:
    if not isinstance(module, nn.ModuleList) or len(module) < 2:
        return ()
    first = module[0]
    names = [n for n in LINEAR_PROJECTIONS if isinstance(getattr(first, n, None), nn.Linear)]
    if len(names) < 2:
        return ()
    for expert in module:
        if type(expert) is not type(first):
            return ()
    projections = []
    for name in names:
        linear = getattr(first, name)
        projections.append(Projection(name, linear.in_features, linear.out_features))
    return tuple(projections)


def _router_path(modules: dict[str, nn.Module], experts_path: str, num_experts: int) -> str | None:
    parent = experts_path.rpartition(".")[0]
    for name in ROUTER_NAMES:
        path = f"{parent}.{name}" if parent else name
        router = modules.get(path)
        if router is None:
            continue
        weight = getattr(router, "weight", None)
        if weight is None:  # e.g. Granite keeps the linear one level down
            weight = getattr(getattr(router, "layer", None), "weight", None)
        if weight is not None and num_experts in tuple(weight.shape):
            return path
    return None


def _unsupported_message(model: nn.Module) -> str:
    classes = sorted({type(m).__name__ for m in model.modules()})
    suspects = [c for c in classes if any(w in c.lower() for w in ("moe", "expert", "sparse", "mlp", "router"))]
    shown = ", ".join(suspects or classes[:30])
    return (
        f"no supported routed-experts module in {type(model).__name__}; module classes found: {shown}. "
        "Supported: transformers 5 fused experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS, "
        "Granite-MoE) and nn.ModuleList experts with nn.Linear projections beside a 'gate' or 'router' linear."
    )
