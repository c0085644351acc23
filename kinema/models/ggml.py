"""GGML-quantised weights (the blocks of GGUF files), dequantised on the fly in torch.

The community publishes Wan 2.1 transformers as GGUF files (city96's conversions for ComfyUI),
their linear weights in GGML block formats: ``Q8_0`` (blocks of 32: one float16 scale and 32
int8), ``Q5_K`` and ``Q4_K`` (super-blocks of 256: float16 scale and minimum, eight 6-bit
sub-block scales and minimums, 5- or 4-bit values). :class:`GGMLLinear` keeps those bytes as they
are in the file (a quarter to a half of bf16's memory) and dequantises the weight at each call.
The formulas are ggml's (``ggml-quants.c``, the same as the ``gguf`` package's numpy reference,
which the tests compare against bit for bit).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError

# ggml type ids (ggml.h, enum ggml_type) -> name; the block formats kinema dequantises
F32, F16, Q8_0, Q4_K, Q5_K, BF16 = 0, 1, 8, 12, 13, 30
TYPE_NAMES = {F32: "F32", F16: "F16", Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", BF16: "BF16"}
BLOCKS = {Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176)}  # values per block, bytes per block
QUANTIZED = tuple(BLOCKS)


def _f16(b: Tensor) -> Tensor:
    """(n, 2) bytes -> (n, 1) float32 from little-endian float16."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _scale_min_k4(scales: Tensor) -> tuple[Tensor, Tensor]:
    """The eight 6-bit sub-block scales and minimums packed in 12 bytes (ggml's get_scale_min_k4)."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _q8_0(blocks: Tensor) -> Tensor:
    d, x = blocks[:, :2], blocks[:, 2:]
    return x.contiguous().view(torch.int8).to(torch.float32) * _f16(d)


def _q4_k(blocks: Tensor) -> Tensor:
    n = blocks.shape[0]
    d, dmin, scales, qs = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), blocks[:, 4:16], blocks[:, 16:]
    sc, mn = _scale_min_k4(scales)
    d = (d * sc).reshape(n, -1, 1)
    dm = (dmin * mn).reshape(n, -1, 1)
    shifts = torch.tensor([0, 4], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 2, 1)
    q = ((qs.reshape(n, -1, 1, 32) >> shifts) & 0x0F).reshape(n, -1, 32).to(torch.float32)
    return (d * q - dm).reshape(n, 256)


def _q5_k(blocks: Tensor) -> Tensor:
    n = blocks.shape[0]
    d, dmin, scales = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4]), blocks[:, 4:16]
    qh, qs = blocks[:, 16:48], blocks[:, 48:]
    sc, mn = _scale_min_k4(scales)
    d = (d * sc).reshape(n, -1, 1)
    dm = (dmin * mn).reshape(n, -1, 1)
    low = torch.tensor([0, 4], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 2, 1)
    high = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 1, 8, 1)
    ql = ((qs.reshape(n, -1, 1, 32) >> low) & 0x0F).reshape(n, -1, 32)
    qh = ((qh.reshape(n, -1, 1, 32) >> high) & 0x01).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.float32)
    return (d * q - dm).reshape(n, 256)


_DEQUANT: dict[int, Callable[[Tensor], Tensor]] = {Q8_0: _q8_0, Q4_K: _q4_k, Q5_K: _q5_k}


def dequantize(data: Tensor, qtype: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """GGML bytes (uint8, any shape holding whole blocks) -> a ``shape`` tensor of ``dtype``.
    F32 / F16 / BF16 data is reinterpreted (its bytes or its values, as stored)."""
    if qtype in (F32, F16, BF16):
        stored = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[qtype]
        t = data if data.dtype == stored else data.contiguous().view(torch.uint8).view(stored)
        return t.reshape(shape).to(dtype)
    if qtype not in _DEQUANT:
        raise CheckpointError(f"GGML type {TYPE_NAMES.get(qtype, qtype)} is not one kinema reads; it reads {', '.join(TYPE_NAMES.values())}")
    per, nbytes = BLOCKS[qtype]
    flat = data.contiguous().view(torch.uint8).reshape(-1, nbytes)
    count = 1
    for s in shape:
        count *= s
    if flat.shape[0] * per != count:
        raise CheckpointError(f"{TYPE_NAMES[qtype]} data holds {flat.shape[0] * per:,} values; the tensor {tuple(shape)} needs {count:,}")
    return _DEQUANT[qtype](flat).reshape(shape).to(dtype)


def quantized_bytes_per_row(qtype: int, in_features: int) -> int:
    per, nbytes = BLOCKS[qtype]
    if in_features % per:
        raise CheckpointError(f"{TYPE_NAMES[qtype]} rows hold whole blocks of {per} values; a row of {in_features} does not")
    return in_features // per * nbytes


class GGMLLinear(nn.Module):
    """A linear layer whose weight stays in a GGML block format; inference only.

    Buffers (saved in ``state_dict``): ``weight``, the ``(out, bytes per row)`` uint8 blocks as in
    the file, and ``bias`` (``(out,)`` in ``compute_dtype``, or None). ``forward`` dequantises the
    weight to ``compute_dtype`` and runs ``F.linear``.
    """

    _stored_as_is = True  # kinema.checkpoints.io.load_into casts none of its tensors

    def __init__(self, in_features: int, out_features: int, qtype: int, bias: bool = True,
                 compute_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features, self.qtype, self.compute_dtype = in_features, out_features, qtype, compute_dtype
        row = quantized_bytes_per_row(qtype, in_features)
        self.register_buffer("weight", torch.zeros(out_features, row, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=compute_dtype, device=device) if bias else None)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return dequantize(self.weight, self.qtype, (self.out_features, self.in_features), dtype or self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        cd = self.compute_dtype
        return F.linear(x.to(cd), self.dequantized_weight(cd), None if self.bias is None else self.bias.to(cd))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, type={TYPE_NAMES[self.qtype]}, compute_dtype={self.compute_dtype}"


def swap_linears(model: nn.Module, kinds: dict[str, Callable[[nn.Linear], nn.Module]]) -> None:
    """Replace the ``nn.Linear`` modules named in ``kinds`` (dotted module names) by what their
    factory builds from them (on the meta device: shapes only)."""
    for name, make in kinds.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear):
            raise CheckpointError(f"{name} holds quantised weights but is a {type(old).__name__}, not a linear layer")
        setattr(parent, child, make(old))
