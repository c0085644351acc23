"""Reading GGUF files (the ``gguf`` package's memory-mapped reader): tensors as they are stored.

A GGUF tensor comes back as a :class:`GGUFTensor`: its bytes (or float values) as a torch view of
the memory-mapped file, its GGML type and its shape in torch order (GGUF stores dimensions
innermost first). Conversions for ComfyUI (city96's ``convert.py``) flatten tensors of more than 4
dimensions (Wan's 5-D patch embedding) and record the real shape as the metadata entry
``comfy.gguf.orig_shape.<name>``; that shape is the one returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..models.ggml import F16, F32, QUANTIZED, TYPE_NAMES, dequantize

GGUF_SUFFIXES = (".gguf",)
ORIG_SHAPE = "comfy.gguf.orig_shape."


@dataclass
class GGUFTensor:
    data: torch.Tensor  # uint8 blocks (quantised), float32 / float16 values, or BF16 bytes
    qtype: int
    shape: tuple[int, ...]

    @property
    def quantized(self) -> bool:
        return self.qtype in QUANTIZED

    def stored(self) -> torch.Tensor:
        """The values of an F32 / F16 / BF16 tensor in their stored dtype (a view of the file)."""
        return dequantize(self.data, self.qtype, self.shape, {F32: torch.float32, F16: torch.float16}.get(self.qtype, torch.bfloat16))

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.data, self.qtype, self.shape, dtype)

    def meta(self) -> torch.Tensor:
        """An empty tensor of the logical shape (for reading a config off the weights)."""
        return torch.empty(self.shape, device="meta")


def read_gguf(path: str | os.PathLike) -> dict[str, GGUFTensor]:
    """Every tensor of a GGUF file, memory-mapped; a one-line CheckpointError for a file that is
    not GGUF, is truncated, or holds a type kinema does not read."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError("reading GGUF files needs the gguf package: pip install gguf") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        reader = GGUFReader(str(path), "c")  # copy-on-write: writable views (never written), still the file's pages
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated or corrupt?): {' '.join(str(e).split())[:200]}") from None
    shapes = {}
    for name, field in reader.fields.items():
        if name.startswith(ORIG_SHAPE):
            shapes[name[len(ORIG_SHAPE) :]] = tuple(int(field.parts[i][0]) for i in field.data)
    out = {}
    for t in reader.tensors:
        qtype = int(t.tensor_type)
        if qtype not in TYPE_NAMES:
            raise CheckpointError(f"{path}: tensor {t.name} is GGML type {t.tensor_type.name}; kinema reads {', '.join(TYPE_NAMES.values())}")
        shape = shapes.get(t.name, tuple(int(d) for d in reversed(t.shape.tolist())))
        data = np.asarray(t.data)
        if qtype not in (F32, F16):
            data = data.view(np.uint8)
        out[t.name] = GGUFTensor(torch.from_numpy(data), qtype, shape)  # a view of the mapped file
    return out
