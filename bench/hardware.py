"""What a result was measured on: device name, library versions, and the device's peak FLOP rate for MFU."""

from __future__ import annotations

import platform
from typing import Any

import torch

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, keyed by a substring of torch.cuda.get_device_name().
# More specific names first: "H100 PCIe" must win over "H100".
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_flops(name: str) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device by name, None when unknown (then no MFU is reported)."""
    for key, value in PEAK_BF16_FLOPS:
        if key.lower() in name.lower():
            return value
    return None


def versions() -> dict[str, str]:
    import peft
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__, "peft": peft.__version__}
    if torch.cuda.is_available():
        found["cuda"] = str(torch.version.cuda)
    return found


def environment(device: torch.device) -> dict[str, Any]:
    return {"device": device_name(device), "device_type": device.type, "versions": versions(),
            "peak_flops": peak_flops(device_name(device)) if device.type == "cuda" else None}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
