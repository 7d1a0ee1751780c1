"""Write a safetensors file one tensor at a time, so that no more than one tensor is ever held to write it.

`safetensors.torch.save_file` needs every tensor at once (and copies them to bytes first). The format is simple
enough to stream: an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and byte
range (padded with spaces to 8 bytes), then the tensors' bytes back to back in the header's order. The header is
built from the declared entries before any tensor is computed; each tensor written must match its entry.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
SIZES: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                         "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in SIZES:
            raise ValueError(f"{self.name}: unsupported safetensors dtype {self.dtype!r}")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SIZES[self.dtype]


def write_streamed(path: Path, entries: list[Entry], tensors: Iterable[torch.Tensor],
                   metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (one per entry, in order, produced lazily) to `path`; returns the tensor bytes written."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    written = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for entry, tensor in zip(entries, tensors, strict=True):
            _check(entry, tensor)
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            written += entry.nbytes
    return written


def _check(entry: Entry, tensor: torch.Tensor) -> None:
    name = DTYPE_NAMES.get(tensor.dtype)
    if name != entry.dtype or tuple(tensor.shape) != entry.shape:
        raise ValueError(f"{entry.name}: produced {name} {tuple(tensor.shape)}, declared {entry.dtype} {entry.shape}")
