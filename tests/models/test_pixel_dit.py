"""The pixel DiT (TTV-1B design): parameter count from the architecture, shapes, the position rule
for other sizes and lengths, the text tower's padding, adaLN-zero, reduced precision."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kinema.errors import KinemaError
from kinema.models.pixel_dit import (
    PIXEL_DIT_PRESETS,
    PixelDiT,
    PixelDiTConfig,
    pool_text,
    sincos_2d,
)
from tests.contracts import ModelContract


def _tiny(seed: int = 0, **over) -> PixelDiT:
    torch.manual_seed(seed)
    model = PixelDiT(dataclasses.replace(PIXEL_DIT_PRESETS["ttv-tiny"](), **over))
    model.init_weights()
    with torch.no_grad():  # adaLN-zero starts at the identity: give every zero-initialised layer some weight
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("head."):
                p.normal_(0, 0.05)
    return model.eval()


def _linear(i: int, o: int) -> int:
    return i * o + o


def test_ttv_1b_parameters_counted_on_meta_equal_the_architecture_row_by_row():
    with torch.device("meta"):
        model = PixelDiT(PIXEL_DIT_PRESETS["ttv-1b"]())
    d, t = 1536, 768
    layer = 2 * 2 * t + _linear(t, 3 * t) + _linear(t, t) + _linear(t, 4 * t) + _linear(4 * t, t)
    rows = {
        "text_encoder": 50257 * t + 256 * t + 6 * layer + 2 * t,
        "text_proj": _linear(t, d),
        "patch_embedding": 3 * 2 * 16 * 16 * d + d,
        "pos_embedding": 16 * 16 * d,
        "time_embedding": _linear(d, 4 * d) + _linear(4 * d, d),
        "blocks": 24 * (_linear(d, 3 * d) + _linear(d, d) + _linear(d, 4 * d) + _linear(4 * d, d) + _linear(d, 6 * d)),
        "head_modulation": _linear(d, 2 * d),
        "head": _linear(d, 2 * 16 * 16 * 3),
    }
    counted = {}
    for name, p in model.named_parameters():
        counted[name.split(".")[0]] = counted.get(name.split(".")[0], 0) + p.numel()
    assert counted == rows
    assert model.num_parameters() == sum(rows.values()) == 1_130_991_360
    assert rows["blocks"] // 24 == 42_490_368  # what the published table's per-block rows add up to (with biases)
    assert model.blocks[0].qkv.weight.shape == (4608, 1536) and model.blocks[0].modulation[1].weight.shape == (9216, 1536)
    assert model.head.weight.shape == (2 * 16 * 16 * 3, 1536) and model.text_proj.weight.shape == (1536, 768)


def test_forward_shapes_and_the_patch_grid():
    model = _tiny()
    x = torch.randn(2, 3, 4, 16, 16)
    states = torch.randn(2, 5, 16)
    out = model(x, torch.tensor([10, 900]), states)
    assert out.shape == x.shape and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"multiple of the patch size \(2, 4, 2\)"):
        model(torch.randn(1, 3, 3, 16, 16), torch.tensor([1]), states[:1])
    with pytest.raises(ValueError, match=r"text states must be \(batch, length, 16\)"):
        model(x, torch.tensor([1, 2]), torch.randn(2, 5, 8))


@pytest.mark.parametrize("frames, size", [(2, (8, 8)), (6, (16, 24)), (10, (32, 16)), (4, (4, 2))])
def test_other_sizes_and_lengths_use_the_resized_table_and_time_rope(frames, size):
    model = _tiny()
    x = torch.randn(1, 3, frames, *size)
    out = model(x, torch.tensor([500]), torch.randn(1, 3, 16))
    assert out.shape == x.shape and torch.isfinite(out).all()
    grid = (frames // 2, size[0] // 4, size[1] // 2)
    table, cos, sin = model.positions(grid, torch.device("cpu"))
    assert table.shape == (grid[1] * grid[2], 32) and cos.shape == (grid[0] * grid[1] * grid[2], 8)


def test_the_base_grid_uses_the_learned_table_as_it_is_and_others_resize_it_bilinearly():
    model = _tiny()
    c = model.config
    table, _, _ = model.positions((2, *c.base_grid), torch.device("cpu"))
    assert torch.equal(table, model.pos_embedding.float())
    # doubling the grid: bilinear (align_corners=False) keeps the mean of the table
    big, _, _ = model.positions((1, 2 * c.base_grid[0], 2 * c.base_grid[1]), torch.device("cpu"))
    torch.testing.assert_close(big.mean(0), model.pos_embedding.float().mean(0), rtol=0, atol=1e-6)


def test_the_position_table_starts_from_2d_sincos_with_a_distinct_row_per_patch():
    torch.manual_seed(0)
    model = PixelDiT(dataclasses.replace(PIXEL_DIT_PRESETS["ttv-tiny"](), dim=36, num_heads=2))  # 36: 9 frequencies per half-axis
    model.init_weights()
    h, w = model.config.base_grid
    table = model.pos_embedding.detach()
    omega = 1.0 / 10000.0 ** (torch.arange(9, dtype=torch.float64) / 9)
    row, col = 2 * w + 3, 1  # patch (2, 3) and patch (0, 1)
    expected = torch.cat([(2 * omega).sin(), (2 * omega).cos(), (3 * omega).sin(), (3 * omega).cos()]).float()
    torch.testing.assert_close(table[row], expected, rtol=0, atol=1e-6)
    assert torch.equal(table[col, :18], sincos_2d(1, 1, 36)[0, :18])  # row 0: sin 0, cos 0
    # every patch of the grid has its own row (unlike N(0, 0.02) rows after training, nearly all alike)
    assert torch.cdist(table, table).add(torch.eye(h * w) * 10).min() > 0.1
    assert torch.equal(sincos_2d(2, 2, 10)[:, 8:], torch.zeros(4, 2))  # the channels past 4 * (dim // 4) stay zero


def test_time_rope_makes_the_model_see_the_order_of_frame_groups():
    model = _tiny()
    x = torch.randn(1, 3, 4, 16, 16)
    states = torch.randn(1, 3, 16)
    out = model(x, torch.tensor([300]), states)
    swapped = model(x.flip(2), torch.tensor([300]), states).flip(2)
    assert not torch.allclose(out, swapped, atol=1e-4)


def test_text_states_do_not_depend_on_padding_and_pooling_counts_real_tokens_only():
    model = _tiny()
    ids = torch.tensor([[5, 7, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0]])
    mask = ids > 0
    long = model.encode_text(ids, mask)
    short = model.encode_text(ids[:, :3], mask[:, :3])
    torch.testing.assert_close(long[:, :3], short, rtol=0, atol=1e-6)
    assert torch.equal(long[:, 3:], torch.zeros_like(long[:, 3:])) and torch.equal(long[1, 2], torch.zeros(16))
    torch.testing.assert_close(pool_text(long, mask), pool_text(long), rtol=0, atol=0)  # zero rows are padding
    torch.testing.assert_close(pool_text(long, mask)[1], long[1, :2].mean(0), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 300\)"):
        model.encode_text(torch.tensor([[300]]), torch.tensor([[True]]))
    with pytest.raises(ValueError, match=r"at most text_len=16"):
        model.encode_text(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))


def test_a_fresh_model_predicts_zero_adaln_zero():
    torch.manual_seed(0)
    model = PixelDiT(PIXEL_DIT_PRESETS["ttv-tiny"]())
    model.init_weights()
    out = model(torch.randn(1, 3, 2, 16, 16), torch.tensor([7]), torch.randn(1, 2, 16))
    assert torch.equal(out, torch.zeros_like(out))


def test_bf16_keeps_the_float32_parts_and_stays_close():
    from kinema.checkpoints.io import load_into

    model = _tiny()
    with torch.device("meta"):
        half = PixelDiT(model.config)
    half = load_into(half, model.state_dict(), dtype=torch.bfloat16, device="cpu", what="pixel DiT").eval()
    assert half.compute_dtype == torch.bfloat16 and half.blocks[0].qkv.weight.dtype == torch.bfloat16
    for name in ("pos_embedding", "patch_embedding.weight", "time_embedding.0.weight", "text_proj.weight", "blocks.0.modulation.1.weight",
                 "text_encoder.token_embedding.weight", "text_encoder.norm.weight"):  # fmt: skip
        assert half.get_parameter(name).dtype == torch.float32, name
    x, states = torch.randn(1, 3, 4, 16, 16), torch.randn(1, 3, 16)
    ref = model(x, torch.tensor([400]), states)
    got = half(x.bfloat16(), torch.tensor([400]), states.bfloat16()).float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.parametrize(
    "over, message",
    [
        ({"dim": 30, "num_heads": 4}, r"dim \(30\) must be num_heads \(4\) times an even head width"),
        ({"text_dim": 10, "text_heads": 4}, r"text_dim \(10\) must be a multiple of text_heads \(4\)"),
        ({"base_size": 18}, r"base_size \(18\) must be a multiple of the spatial patch"),
        ({"freq_dim": 15}, r"freq_dim must be even"),
        ({"patch_size": (2, 4)}, r"patch_size \(t, h, w\) must be a list of 3 integers"),
        ({"vocab_size": 0}, r"vocab_size"),
    ],
)
def test_bad_configs_are_one_line_errors(over, message):
    with pytest.raises(KinemaError, match=message):
        PixelDiTConfig(**{**dataclasses.asdict(PIXEL_DIT_PRESETS["ttv-tiny"]()), **over})


# ------------------------------------------------------------------------------------------------
# The model contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# bf16 with float32 parts (its own format: no external key map)
# ------------------------------------------------------------------------------------------------
class TestPixelDiTContract(ModelContract):
    keeps_fp32 = True
    bf16_output_dtype = torch.bfloat16
    bf16_fp32_inputs = (1,)  # the timesteps
    golden = [-0.10023792, -0.99407917, 0.18181509, -0.73383123, 0.11846751, 0.72596109, -1.12434101, 0.56458193, 0.96817827]

    def build(self) -> PixelDiT:
        return PixelDiT(PIXEL_DIT_PRESETS["ttv-tiny"]())

    def inputs(self):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 3, 4, 16, 16, generator=g)
        states = torch.randn(2, 5, 16, generator=g)
        states[1, 3:] = 0  # the second prompt padded
        return x, torch.tensor([3.0, 870.0]), states

    def golden_slice(self, out):
        return torch.cat([out[0, :, 0, 0, :2].flatten(), out[1, 2, -1, -1, -3:]])
