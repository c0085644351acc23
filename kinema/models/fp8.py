"""FP8 weight storage for linear layers: 1 byte per weight, dequantised on the fly.

A weight ``W`` (out, in) is stored as ``float8_e4m3fn`` values ``Q`` and one float32 scale per
output channel, ``W ≈ Q.float() * scale[:, None]`` with ``scale = amax(|W_row|) / 448`` (448 is the
largest e4m3 value, so every row uses the full range). The layer computes in ``compute_dtype``
(bfloat16 by default): ``x @ (Q * scale).T + bias``. This halves the weight memory of a bfloat16
model; it does not use FP8 matmuls.

Typical use, after loading full-precision weights::

    model = quantize_linears_fp8(model, skip=lambda name, linear: name in ("embed", "head"))
    print(fp8_state_bytes(model))

or build with :class:`FP8Linear` in place of ``nn.Linear`` on the meta device and load a checkpoint
saved from a quantised model with ``kinema.checkpoints.io.load_into(model, state, dtype=None)``
(a dtype cast there would round the float32 scales, so the layer refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, KinemaError

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "FP8Linear",
    "StateBytes",
    "dequantize_fp8_rows",
    "fp8_state_bytes",
    "quantize_fp8_rows",
    "quantize_linear",
    "quantize_linears_fp8",
]

FP8_DTYPE = torch.float8_e4m3fn  # 4 exponent bits, 3 mantissa bits, no infinities
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448.0, the largest finite e4m3fn value


# ------------------------------------------------------------------------------------------------
# Per-channel quantisation
# ------------------------------------------------------------------------------------------------
def quantize_fp8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Quantise a ``(out, in)`` weight to e4m3 with one scale per row (output channel).

    Returns ``(q, scale)``: ``q`` ``(out, in)`` float8_e4m3fn and ``scale`` ``(out,)`` float32 with
    ``scale = amax / 448`` (1 for an all-zero row, which then stays exactly zero). Each element is
    off by at most half an e4m3 step: ``2^-4`` of its magnitude (3 mantissa bits), or ``2^-10 *
    scale`` where ``|w| / scale`` falls among the subnormals (below ``2^-6``). Works on the meta
    device; raises :class:`KinemaError` for non-finite weights.
    """
    if weight.ndim != 2:
        raise KinemaError(f"FP8 quantisation takes an (out, in) weight; got shape {tuple(weight.shape)}")
    if weight.is_meta:  # shapes only (meta ops would run Python decompositions, importing torch._dynamo)
        return torch.empty(weight.shape, dtype=FP8_DTYPE, device="meta"), torch.empty(weight.shape[0], device="meta")
    w = weight.detach().float()  # (out, in)
    amax = w.abs().amax(dim=1)  # (out,)
    if not torch.isfinite(amax).all():
        raise KinemaError("cannot quantise a weight with inf or NaN entries to FP8; check the checkpoint it came from")
    scale = amax / FP8_MAX  # (out,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero (or underflowing) rows: 1, not 0/0
    q = (w / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # (out, in); clamp: division rounding
    return q, scale


def dequantize_fp8_rows(q: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``q.float() * scale[:, None]`` in ``dtype``: the ``(out, in)`` weight :func:`quantize_fp8_rows`
    approximated (the product is formed in float32, then rounded once to ``dtype``)."""
    return (q.float() * scale[:, None]).to(dtype)  # (out, in)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
class FP8Linear(nn.Module):
    """A linear layer whose weight is stored in FP8 (per-output-channel scales); inference only.

    Buffers (no parameters; all saved in ``state_dict``):
        ``weight``: ``(out, in)`` float8_e4m3fn.
        ``weight_scale``: ``(out,)`` float32.
        ``bias``: ``(out,)`` in ``compute_dtype``, or None.

    ``forward`` takes ``(..., in)`` in any float dtype and returns ``(..., out)`` in ``compute_dtype``.
    ``Module.to(dtype)`` / ``.half()`` change the compute dtype (and the bias with it) but leave the
    FP8 weight and float32 scale as they are; device moves move everything.
    """

    _stored_as_is = True  # kinema.checkpoints.io.load_into casts none of its tensors (its own load casts the bias)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_compute_dtype(compute_dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=compute_dtype, device=device) if bias else None)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The ``(out, in)`` weight in ``dtype`` (default: the compute dtype)."""
        return dequantize_fp8_rows(self.weight, self.weight_scale, dtype or self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        # The row scales multiply the output, not the weight: the FP8 -> compute-dtype cast is exact
        # (e4m3 fits bf16/fp16/fp32) and no float32 copy of the weight is made per call, which made
        # one-token decoding 13x slower than bf16 when the weight was dequantised in float32 first.
        cd = self.compute_dtype
        y = F.linear(x.to(cd), self.weight.to(cd)) * self.weight_scale.to(cd)  # (..., out)
        return y if self.bias is None else y + self.bias.to(cd)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"compute_dtype={self.compute_dtype}"
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "FP8Linear":
        # Module.to(dtype) casts every floating-point buffer, float8 included: undo that for the
        # stored weight and scale (from the untouched originals, so nothing is rounded) and take the
        # new dtype as the compute dtype instead. Device moves pass through unchanged.
        weight, scale = self.weight, self.weight_scale
        super()._apply(fn, recurse)
        new_dtype = self.weight.dtype
        if new_dtype != weight.dtype:
            _check_compute_dtype(new_dtype)
            self.weight = weight.to(device=self.weight.device)
            self.weight_scale = scale.to(device=self.weight_scale.device)
            self.compute_dtype = new_dtype
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # With assign=True (meta-device loading) the tensors replace the buffers as they are, so
        # check the storage dtypes here: a cast weight or scale would silently change results.
        expected = {"weight": FP8_DTYPE, "weight_scale": torch.float32}
        for name, dtype in expected.items():
            t = state_dict.get(prefix + name)
            if t is not None and t.dtype != dtype:
                raise CheckpointError(
                    f"FP8Linear {prefix}{name} is {t.dtype}, expected {dtype}: load FP8 checkpoints without a dtype "
                    "cast (load_into(..., dtype=None)); a full-precision checkpoint loads into nn.Linear, then "
                    "quantize_linears_fp8"
                )
        bias = state_dict.get(prefix + "bias")
        if bias is not None and bias.dtype != self.compute_dtype:
            state_dict[prefix + "bias"] = bias.to(self.compute_dtype)  # load_state_dict's own copy of the dict
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _check_compute_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.itemsize < 2:
        raise KinemaError(f"FP8Linear computes in a 16/32/64-bit float dtype (torch.bfloat16 by default); got {dtype!r}")


# ------------------------------------------------------------------------------------------------
# Converting models
# ------------------------------------------------------------------------------------------------
def quantize_linear(linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16) -> FP8Linear:
    """An :class:`FP8Linear` on ``linear``'s device holding its weight in FP8 (per-row scales) and a
    copy of its bias in ``compute_dtype``. ``linear`` itself is left as it was."""
    out = FP8Linear(linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype, device="meta")
    out.weight, out.weight_scale = quantize_fp8_rows(linear.weight)
    if linear.bias is not None:
        out.bias = linear.bias.detach().to(compute_dtype, copy=True)
    return out


def quantize_linears_fp8(
    model: nn.Module,
    *,
    skip: Callable[[str, nn.Linear], bool] | None = None,
    compute_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` by an :class:`FP8Linear`.

    Args:
        model: any module; its linears are swapped by qualified name (a linear shared by several
            names becomes one shared ``FP8Linear``).
        skip: ``skip(qualified_name, linear) -> True`` keeps that linear in full precision (output
            heads, embeddings-tied projections, small sensitive layers).
        compute_dtype: the dtype the new layers compute and return in.

    Returns:
        ``model`` (or, when ``model`` is itself an ``nn.Linear`` not skipped, its replacement).

    Only modules of type exactly ``nn.Linear`` are replaced: subclasses may read ``.weight``
    directly (``nn.MultiheadAttention``'s ``out_proj`` does), which would break on FP8 storage.
    A linear whose weight is tied to another module's gets its own FP8 copy: skip it to keep the tie.
    """
    _check_compute_dtype(compute_dtype)
    targets = [
        (name, m)
        for name, m in model.named_modules(remove_duplicate=False)
        if type(m) is nn.Linear and not (skip is not None and skip(name, m))
    ]
    replaced: dict[int, FP8Linear] = {}
    for name, linear in targets:
        new = replaced.get(id(linear))
        if new is None:
            new = replaced[id(linear)] = quantize_linear(linear, compute_dtype)
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


@dataclass(frozen=True)
class StateBytes:
    """Bytes held by a model's parameters and buffers, split by what they are."""

    fp8_weights: int  # FP8Linear.weight: 1 byte per element
    fp8_scales: int  # FP8Linear.weight_scale: 4 bytes per output channel
    other: int  # everything else (biases, norms, embeddings, unquantised linears)

    @property
    def total(self) -> int:
        return self.fp8_weights + self.fp8_scales + self.other


def fp8_state_bytes(model: nn.Module) -> StateBytes:
    """Count the bytes of ``model``'s parameters and buffers (each shared tensor once; meta tensors
    count the bytes they would take)."""
    fp8 = scales = other = 0
    seen: set[int] = set()
    for module in model.modules():
        for t in [*module._parameters.values(), *module._buffers.values()]:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            size = t.numel() * t.element_size()
            if isinstance(module, FP8Linear) and t is module.weight:
                fp8 += size
            elif isinstance(module, FP8Linear) and t is module.weight_scale:
                scales += size
            else:
                other += size
    return StateBytes(fp8, scales, other)
