"""Unit tests of kinema's Wan 2.1 transformer: presets, shapes, dtypes, determinism, golden values."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kinema.checkpoints import wan as wan_ckpt
from kinema.checkpoints.io import build_on_meta, module_pattern
from kinema.checkpoints.wan import DIFFUSERS_KEYS, ORIGINAL_KEYS
from kinema.errors import CheckpointError, KinemaError
from kinema.models.wan import (
    WAN_I2V_PRESETS,
    WAN_PRESETS,
    WanTransformer,
    WanTransformerConfig,
)
from tests.contracts import ModelContract

TINY = WanTransformerConfig(dim=24, ffn_dim=32, num_heads=2, num_layers=2, text_dim=32, rope_max_seq_len=32)
TINY_I2V = replace(TINY, in_dim=8, out_dim=4, image_dim=16)

# Exact parameter counts (diffusers WanTransformer3DModel on meta gives the same numbers).
PRESET_PARAMETERS = {
    "wan2.1-t2v-1.3b": 1_418_996_800,
    "wan2.1-t2v-14b": 14_288_491_584,
    "wan2.1-i2v-14b": 16_394_878_784,
}


def _tiny(config: WanTransformerConfig = TINY, seed: int = 0) -> WanTransformer:
    torch.manual_seed(seed)
    return WanTransformer(config).eval()


def _inputs(config: WanTransformerConfig = TINY, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_dim, 3, 4, 6, generator=g)  # (B, C, F, H, W): a 3 x 2 x 3 token grid
    t = torch.linspace(500.0, 20.0, batch)
    context = torch.randn(batch, 7, config.text_dim, generator=g)
    image = torch.randn(batch, 257, config.image_dim, generator=g) if config.image_dim else None
    return x, t, context, image


# ------------------------------------------------------------------------------------------------
# Presets and configs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESET_PARAMETERS))
def test_preset_parameter_counts(name):
    model = build_on_meta(lambda: WanTransformer({**WAN_PRESETS, **WAN_I2V_PRESETS}[name]()))
    assert model.num_parameters() == PRESET_PARAMETERS[name]


def test_i2v_preset_count_equals_diffusers():
    diffusers = pytest.importorskip("diffusers")
    config = WAN_I2V_PRESETS["wan2.1-i2v-14b"]()
    with torch.device("meta"):
        reference = diffusers.WanTransformer3DModel(**{k: v for k, v in wan_ckpt.to_diffusers(config).items() if not k.startswith("_")})
    assert sum(p.numel() for p in reference.parameters()) == PRESET_PARAMETERS["wan2.1-i2v-14b"]


def test_preset_keys_map_both_ways():
    state = build_on_meta(lambda: WanTransformer(WAN_I2V_PRESETS["wan2.1-i2v-14b"]())).state_dict()
    assert DIFFUSERS_KEYS.to_ours(DIFFUSERS_KEYS.to_theirs(state)).keys() == state.keys()
    assert ORIGINAL_KEYS.to_theirs(state).keys() == state.keys()


# config.json files as published for Wan2.1-T2V-1.3B (original and -Diffusers) and Wan2.1-I2V-14B-480P-Diffusers.
ORIGINAL_1_3B = {
    "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960,
    "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512,
}  # fmt: skip
DIFFUSERS_1_3B = {
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0", "added_kv_proj_dim": None,
    "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256,
    "image_dim": None, "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16,
    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096,
}  # fmt: skip
DIFFUSERS_I2V_14B = {
    **DIFFUSERS_1_3B, "added_kv_proj_dim": 5120, "ffn_dim": 13824, "image_dim": 1280, "in_channels": 36,
    "num_attention_heads": 40, "num_layers": 40,
}  # fmt: skip


def test_published_configs_give_the_presets():
    assert wan_ckpt.from_original(ORIGINAL_1_3B) == WAN_PRESETS["wan2.1-t2v-1.3b"]()
    assert wan_ckpt.from_diffusers(DIFFUSERS_1_3B) == WAN_PRESETS["wan2.1-t2v-1.3b"]()
    assert wan_ckpt.from_diffusers(DIFFUSERS_I2V_14B) == WAN_I2V_PRESETS["wan2.1-i2v-14b"]()
    i2v = WAN_I2V_PRESETS["wan2.1-i2v-14b"]()
    assert wan_ckpt.from_original(wan_ckpt.to_original(i2v)) == i2v
    assert wan_ckpt.from_diffusers(wan_ckpt.to_diffusers(i2v)) == i2v


def test_config_inferred_from_weights():
    for name in ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b"):
        preset = {**WAN_PRESETS, **WAN_I2V_PRESETS}[name]
        state = build_on_meta(lambda: WanTransformer(preset())).state_dict()
        assert wan_ckpt.from_weights(state) == preset()


def test_unsupported_configs_raise():
    with pytest.raises(CheckpointError, match="flf2v"):
        wan_ckpt.from_original({**ORIGINAL_1_3B, "model_type": "flf2v"})
    with pytest.raises(CheckpointError, match="window_size"):
        wan_ckpt.from_original({**ORIGINAL_1_3B, "window_size": [256, 256]})
    with pytest.raises(CheckpointError, match="vace_layers"):
        wan_ckpt.from_original({**ORIGINAL_1_3B, "vace_layers": [0, 2]})
    with pytest.raises(CheckpointError, match="pos_embed_seq_len"):
        wan_ckpt.from_diffusers({**DIFFUSERS_I2V_14B, "pos_embed_seq_len": 514})
    with pytest.raises(KinemaError, match="multiple of num_heads"):
        WanTransformerConfig(dim=25, ffn_dim=32, num_heads=2, num_layers=1)


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY, TINY_I2V], ids=["t2v", "i2v"])
def test_output_shape(config):
    x, t, context, image = _inputs(config, batch=2)
    with torch.no_grad():
        out = _tiny(config)(x, t, context, image)
    assert out.shape == (2, config.out_dim, 3, 4, 6) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_context_is_zero_padded_to_text_len():
    model = _tiny()
    x, t, context, _ = _inputs()
    padded = torch.cat([context, context.new_zeros(1, TINY.text_len - 7, TINY.text_dim)], dim=1)
    with torch.no_grad():
        assert torch.equal(model(x, t, context), model(x, t, padded))
        assert torch.equal(model(x, t[0], context), model(x, t, context))  # a scalar timestep broadcasts


def test_fp32_prefixes_match_whole_module_names():
    kept = module_pattern(WanTransformer._keep_in_fp32)
    assert kept.match("blocks.1.norm3.weight") and not kept.match("blocks.1.norm30.weight")
    assert kept.match("img_emb.proj.4.bias") and not kept.match("img_emb.proj.1.weight")


def test_bad_inputs_raise():
    model, i2v = _tiny(), _tiny(TINY_I2V)
    x, t, context, _ = _inputs()
    xi, ti, ci, image = _inputs(TINY_I2V)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(x[..., :5], t, context)
    with pytest.raises(ValueError, match="needs image_context"):
        i2v(xi, ti, ci)
    with pytest.raises(ValueError, match="takes no image_context"):
        model(x, t, context, image)
    with pytest.raises(ValueError, match="text_len"):
        model(x, t, context.new_zeros(1, TINY.text_len + 1, TINY.text_dim))


def test_prepared_context_is_bit_identical_and_checked():
    model = _tiny(TINY_I2V)
    x, t, context, image = _inputs(TINY_I2V, batch=2)
    with torch.no_grad():
        prepared = model.prepare_context(context, image)
        assert torch.equal(model(x, t, prepared), model(x, t, context, image))
        with pytest.raises(ValueError, match="conditioning has batch 2"):
            model(x[:1], t[:1], prepared)


# ------------------------------------------------------------------------------------------------
# The model contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# key maps, bf16 with float32 modules
# ------------------------------------------------------------------------------------------------
class TestWanTransformerContract(ModelContract):
    """Text-to-video. Golden values computed once, after the diffusers parity tests passed."""

    config: WanTransformerConfig = TINY
    keeps_fp32 = True
    fp32_prefixes_all_used = False  # the image MLP's norms exist only in i2v models
    bf16_fp32_inputs = (1,)  # the timestep stays float32
    golden = [
        0.71176571, -0.24031715, -0.83681637, -0.25365973,
        0.05026770, -0.38911620, -0.46564388, -0.71156180,
        -0.57507575, -1.02076542, 0.43315905, -0.11916082,
        0.52698976,  # mean |out|
    ]  # fmt: skip

    def build(self) -> WanTransformer:
        return WanTransformer(self.config)

    def inputs(self, batch: int = 1):
        x, t, context, image = _inputs(self.config, batch=batch)
        return (x, t, context) if image is None else (x, t, context, image)

    def bf16_case(self):
        return self.inputs(batch=2)

    def golden_slice(self, out):
        return torch.cat([out[0, :3, 1, 2, :4].flatten(), out.abs().mean()[None]])

    def key_maps(self):
        return [DIFFUSERS_KEYS, ORIGINAL_KEYS]


class TestWanI2VTransformerContract(TestWanTransformerContract):
    """Image-to-video: CLIP image tokens, the image MLP and its float32 norms."""

    config = TINY_I2V
    fp32_prefixes_all_used = True
    golden = [
        -0.38997766, -0.38945007, -0.28087583, -0.02980085,
        0.80963606, 0.48070946, -0.62935340, -0.18330213,
        -0.03415082, 0.30860180, -0.17678285, -1.10680282,
        0.57684731,  # mean |out|
    ]  # fmt: skip
