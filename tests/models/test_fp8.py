"""FP8 weight storage: the quantisation error bound, FP8Linear against bf16 and fp32 linears, zero
rows, safetensors and state-dict round trips (meta-device loading included), in-place conversion of
a model with ``skip``, dtype moves, and the memory it saves."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kinema.checkpoints.io import build_on_meta, load_into, load_safetensors, save_safetensors
from kinema.errors import CheckpointError, KinemaError
from kinema.models.fp8 import (
    FP8_DTYPE,
    FP8Linear,
    dequantize_fp8_rows,
    fp8_state_bytes,
    quantize_fp8_rows,
    quantize_linear,
    quantize_linears_fp8,
)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float32."""
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a float8 tensor (others as they are), for bit-exact comparisons."""
    return t.view(torch.uint8) if t.dtype == FP8_DTYPE else t


def random_linear(in_features: int = 96, out_features: int = 48, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16, bias=False))


def tiny_fp8_mlp(device: str | None = None) -> nn.Sequential:
    """The FP8 architecture of :func:`tiny_mlp` quantised, built directly (for checkpoint loading)."""
    return nn.Sequential(FP8Linear(32, 64, device=device), nn.GELU(), FP8Linear(64, 16, bias=False, device=device))


# ------------------------------------------------------------------------------------------------
# Quantisation
# ------------------------------------------------------------------------------------------------
def test_quantisation_error_is_within_half_an_e4m3_step():
    g = torch.Generator().manual_seed(0)
    row_scales = 10.0 ** torch.empty(64, 1).uniform_(-4, 4, generator=g)  # rows of very different magnitudes
    w = torch.randn(64, 256, generator=g) * row_scales  # (out, in)
    q, scale = quantize_fp8_rows(w)
    assert q.dtype == FP8_DTYPE and q.shape == (64, 256)
    assert scale.dtype == torch.float32 and scale.shape == (64,)
    assert torch.equal(scale, w.abs().amax(dim=1) / 448)
    err = (dequantize_fp8_rows(q, scale) - w).abs()
    # Round to nearest with 3 mantissa bits: a normal value v = w / scale (2^-6 <= |v| <= 448) is off by
    # at most half a step, 2^-4 |v|; a subnormal one (|v| < 2^-6, step 2^-9) by at most 2^-10.
    # Times the scale, plus float32 rounding of the division and product (the 1e-5 slack).
    bound = torch.maximum(2.0**-4 * w.abs(), 2.0**-10 * scale[:, None]) * (1 + 1e-5)
    assert (err <= bound).all(), f"worst ratio {(err / bound).max():.4f}"
    # each row's largest entry maps to 448 exactly, so it comes back to float32 rounding
    row_max = w.abs().argmax(dim=1, keepdim=True)  # (out, 1)
    assert (q.float().abs().gather(1, row_max) == 448).all()


def test_a_zero_row_gives_zeros_not_nan():
    w = torch.randn(4, 16)
    w[2] = 0
    q, scale = quantize_fp8_rows(w)
    assert scale[2] == 1 and (q[2].float() == 0).all()
    linear = nn.Linear(16, 4)
    with torch.no_grad():
        linear.weight.copy_(w)
    out = quantize_linear(linear)(torch.randn(3, 16))
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 2], linear.bias[2].to(torch.bfloat16).expand(3))  # only the bias is left


def test_non_finite_weights_are_refused():
    w = torch.randn(4, 8)
    w[1, 3] = math.inf
    with pytest.raises(KinemaError, match="inf or NaN"):
        quantize_fp8_rows(w)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
def test_fp8_linear_is_close_to_the_bf16_linear():
    linear = random_linear()
    x = torch.randn(2, 7, 96)  # (B, L, in)
    fp8 = quantize_linear(linear)
    out = fp8(x)
    assert out.shape == (2, 7, 48) and out.dtype == torch.bfloat16
    reference = nn.Linear(96, 48).to(torch.bfloat16)
    reference.load_state_dict(linear.state_dict())
    # e4m3 rounding errors are ~2^-4 / sqrt(3) * 0.7 per weight, relative, and average out over a row
    assert rel_err(out, reference(x.to(torch.bfloat16))) < 0.04
    # against the dequantised weight in float32, only bf16 rounding is left
    exact = nn.functional.linear(x, fp8.dequantized_weight(torch.float32), linear.bias)
    assert rel_err(out, exact) < 1e-2


def test_forward_accepts_other_input_dtypes_and_computes_in_the_compute_dtype():
    fp8 = quantize_linear(random_linear(), compute_dtype=torch.float32)
    x = torch.randn(5, 96)
    out = fp8(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert torch.equal(out, fp8(x.to(torch.bfloat16).float()))


def test_weights_are_buffers_of_one_byte_per_element():
    fp8 = quantize_linear(random_linear(96, 48))
    assert list(fp8.parameters()) == []
    assert {k: v.dtype for k, v in fp8.state_dict().items()} == {
        "weight": FP8_DTYPE,
        "weight_scale": torch.float32,
        "bias": torch.bfloat16,
    }
    assert fp8.weight.element_size() == 1
    sizes = fp8_state_bytes(fp8)
    assert (sizes.fp8_weights, sizes.fp8_scales, sizes.other) == (48 * 96, 48 * 4, 48 * 2)
    full = fp8_state_bytes(random_linear(96, 48).to(torch.bfloat16))
    assert full.fp8_weights == 0 and full.total == (48 * 96 + 48) * 2


def test_to_dtype_changes_the_compute_dtype_not_the_storage():
    fp8 = quantize_linear(random_linear())
    weight, scale = fp8.weight.clone(), fp8.weight_scale.clone()
    fp8.to(torch.float16)
    assert fp8.compute_dtype == torch.float16 and fp8.bias.dtype == torch.float16
    assert fp8.weight.dtype == FP8_DTYPE and torch.equal(bits(fp8.weight), bits(weight))
    assert fp8.weight_scale.dtype == torch.float32 and torch.equal(fp8.weight_scale, scale)  # not rounded
    assert fp8(torch.randn(3, 96)).dtype == torch.float16
    fp8.to("meta")
    assert fp8.weight.is_meta and fp8.weight.dtype == FP8_DTYPE


def test_bad_compute_dtype_raises():
    with pytest.raises(KinemaError, match="compute"):
        FP8Linear(4, 4, compute_dtype=torch.int8)
    with pytest.raises(KinemaError, match="compute"):
        quantize_linears_fp8(tiny_mlp(), compute_dtype=FP8_DTYPE)


# ------------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------------
def test_safetensors_round_trip_is_exact(tmp_path):
    model = quantize_linears_fp8(tiny_mlp())
    state = model.state_dict()
    save_safetensors(state, tmp_path / "model.safetensors")
    loaded = load_safetensors(tmp_path / "model.safetensors")
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype, k
        assert torch.equal(bits(loaded[k]), bits(v)), k

    x = torch.randn(4, 32)
    # the usual path: build on meta, fill with assign=True, no dtype cast
    on_meta = load_into(build_on_meta(tiny_fp8_mlp), loaded, what="FP8 MLP")
    assert on_meta[0].weight.dtype == FP8_DTYPE and not on_meta[0].weight.is_meta
    assert torch.equal(on_meta(x), model(x))
    # a full-precision architecture on meta, quantised on meta (shapes only), then filled
    converted = load_into(quantize_linears_fp8(build_on_meta(tiny_mlp)), loaded, what="FP8 MLP")
    assert torch.equal(converted(x), model(x))
    # and a plain load_state_dict into a materialised model (copy_ into the buffers)
    copied = tiny_fp8_mlp()
    copied.load_state_dict(loaded)
    assert torch.equal(copied(x), model(x))


def test_a_cast_checkpoint_is_refused(tmp_path):
    state = quantize_linears_fp8(tiny_mlp()).state_dict()
    kept = load_into(build_on_meta(tiny_fp8_mlp), state, dtype=torch.bfloat16)  # load_into leaves a quantised layer as stored
    assert kept[0].weight.dtype == FP8_DTYPE and kept[0].weight_scale.dtype == torch.float32
    cast = {k: (v.to(torch.bfloat16) if k.endswith("0.weight") else v) for k, v in state.items()}  # a file saved after a cast
    with pytest.raises(CheckpointError, match=r"0\.weight is torch.bfloat16.*dtype=None"):
        load_into(build_on_meta(tiny_fp8_mlp), cast)
    full_precision = tiny_mlp().state_dict()  # an unquantised checkpoint: would be copied unscaled
    with pytest.raises(CheckpointError, match=r"0\.weight is torch.float32.*quantize_linears_fp8"):
        tiny_fp8_mlp().load_state_dict(full_precision)


# ------------------------------------------------------------------------------------------------
# Converting models
# ------------------------------------------------------------------------------------------------
def test_quantize_linears_replaces_linears_by_name_and_honours_skip():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    )
    head = model[2][2]
    seen = []

    def skip(name: str, linear: nn.Linear) -> bool:
        seen.append((name, type(linear)))
        return name == "2.2"  # keep the output head in full precision

    x = torch.randn(3, 8)
    expected = model(x)
    out = quantize_linears_fp8(model, skip=skip, compute_dtype=torch.float32)  # float32: the head stays float32
    assert out is model
    assert seen == [("0", nn.Linear), ("2.0", nn.Linear), ("2.2", nn.Linear)]
    assert isinstance(model[0], FP8Linear) and isinstance(model[2][0], FP8Linear)
    assert model[2][2] is head and isinstance(model[1], nn.ReLU) and isinstance(model[2][1], nn.LayerNorm)
    y = model(x)
    assert rel_err(y, expected) < 0.1
    assert quantize_linears_fp8(model) is model and isinstance(model[2][2], FP8Linear)  # a second pass: the rest


def test_quantize_linears_shared_root_subclass_and_meta():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, shared)
    quantize_linears_fp8(model)
    assert isinstance(model[0], FP8Linear) and model[0] is model[1]  # still one module

    assert isinstance(quantize_linears_fp8(nn.Linear(4, 4)), FP8Linear)  # the root itself

    attention = nn.MultiheadAttention(8, 2)  # out_proj subclasses nn.Linear and is read directly
    quantize_linears_fp8(attention)
    assert type(attention.out_proj) is not FP8Linear

    on_meta = quantize_linears_fp8(build_on_meta(tiny_mlp))
    assert on_meta[0].weight.is_meta and on_meta[0].weight.dtype == FP8_DTYPE
    assert fp8_state_bytes(on_meta).fp8_weights == 32 * 64 + 64 * 16


def test_quantised_model_memory():
    model = tiny_mlp().to(torch.bfloat16)
    before = fp8_state_bytes(model)
    quantize_linears_fp8(model)
    after = fp8_state_bytes(model)
    weights = 32 * 64 + 64 * 16
    assert before.total == (weights + 64) * 2
    assert after.fp8_weights == weights and after.fp8_scales == (64 + 16) * 4 and after.other == 64 * 2
