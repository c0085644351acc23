"""Unit tests of kinema's LTX-Video (Spectro-2B) transformer: presets, configs, shapes, timesteps,
masks, positions, dtypes, determinism, golden values."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kinema.checkpoints import ltx as ltx_ckpt
from kinema.checkpoints.io import build_on_meta
from kinema.checkpoints.ltx import DIFFUSERS_KEYS, ORIGINAL_KEYS
from kinema.errors import CheckpointError, KinemaError
from kinema.models.ltx import (
    LTX_PRESETS,
    LTXTransformer,
    LTXTransformerConfig,
    ltx_positions,
    ltx_rope,
    ltx_rope_scale,
)
from tests.contracts import ModelContract

TINY = LTXTransformerConfig(dim=16, ffn_dim=64, num_heads=2, num_layers=2, in_dim=8, out_dim=6, text_dim=12)
SCALE = ltx_rope_scale(25, 8, 32)  # LTX-Video's VAE at diffusers' default 25 fps
SPECTRO_2B_PARAMETERS = 1_923_385_472  # diffusers LTXVideoTransformer3DModel() default


def _tiny(config: LTXTransformerConfig = TINY, seed: int = 0) -> LTXTransformer:
    torch.manual_seed(seed)
    return LTXTransformer(config).eval()


def _inputs(config: LTXTransformerConfig = TINY, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_dim, 3, 2, 4, generator=g)  # (B, C, F, H, W): 24 tokens
    t = torch.linspace(500.0, 20.0, batch)
    context = torch.randn(batch, 7, config.text_dim, generator=g)
    return x, t, context


# ------------------------------------------------------------------------------------------------
# Presets and configs
# ------------------------------------------------------------------------------------------------
def test_preset_parameter_count_equals_diffusers():
    model = build_on_meta(lambda: LTXTransformer(LTX_PRESETS["spectro-2b"]()))
    assert model.num_parameters() == SPECTRO_2B_PARAMETERS
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        reference = diffusers.LTXVideoTransformer3DModel()
    assert sum(p.numel() for p in reference.parameters()) == SPECTRO_2B_PARAMETERS


def test_preset_keys_map_both_ways():
    state = build_on_meta(lambda: LTXTransformer(LTX_PRESETS["spectro-2b"]())).state_dict()
    for keys in (DIFFUSERS_KEYS, ORIGINAL_KEYS):
        assert keys.to_ours(keys.to_theirs(state)).keys() == state.keys()
    original = ORIGINAL_KEYS.to_theirs(state)
    assert "patchify_proj.weight" in original and "transformer_blocks.27.attn2.k_norm.weight" in original
    assert "adaln_single.emb.timestep_embedder.linear_1.weight" in original


# The transformer config.json of Lightricks/LTX-Video (diffusers layout), and the original config
# that LTX-Video maps it to (ltx_video/utils/diffusers_config_mapping.py).
DIFFUSERS_2B = {
    "_class_name": "LTXVideoTransformer3DModel", "_diffusers_version": "0.32.0.dev0", "activation_fn": "gelu-approximate",
    "attention_bias": True, "attention_head_dim": 64, "attention_out_bias": True, "caption_channels": 4096,
    "cross_attention_dim": 2048, "in_channels": 128, "norm_elementwise_affine": False, "norm_eps": 1e-06,
    "num_attention_heads": 32, "num_layers": 28, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
    "qk_norm": "rms_norm_across_heads",
}  # fmt: skip
ORIGINAL_2B = {
    "_class_name": "Transformer3DModel", "_diffusers_version": "0.25.1", "_name_or_path": "PixArt-alpha/PixArt-XL-2-256x256",
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "attention_type": "default",
    "caption_channels": 4096, "cross_attention_dim": 2048, "double_self_attention": False, "dropout": 0.0,
    "in_channels": 128, "norm_elementwise_affine": False, "norm_eps": 1e-06, "norm_num_groups": 32,
    "num_attention_heads": 32, "num_embeds_ada_norm": 1000, "num_layers": 28, "num_vector_embeds": None,
    "only_cross_attention": False, "out_channels": 128, "project_to_2d_pos": True, "upcast_attention": False,
    "use_linear_projection": False, "qk_norm": "rms_norm", "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope", "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048], "timestep_scale_multiplier": 1000,
}  # fmt: skip


def test_published_configs_give_the_preset():
    preset = LTX_PRESETS["spectro-2b"]()
    assert ltx_ckpt.from_diffusers(DIFFUSERS_2B) == preset
    assert ltx_ckpt.from_diffusers({"_class_name": "LTXVideoTransformer3DModel"}) == preset  # all defaults
    assert ltx_ckpt.from_original(ORIGINAL_2B) == preset
    assert ltx_ckpt.from_diffusers(ltx_ckpt.to_diffusers(preset)) == preset
    assert ltx_ckpt.from_original(ltx_ckpt.to_original(preset)) == preset
    published = {k: v for k, v in DIFFUSERS_2B.items() if not k.startswith("_")}
    assert {k: v for k, v in ltx_ckpt.to_diffusers(preset).items() if not k.startswith("_")} == published


def test_config_inferred_from_weights():
    state = build_on_meta(lambda: LTXTransformer(LTX_PRESETS["spectro-2b"]())).state_dict()
    assert ltx_ckpt.from_weights(state) == LTX_PRESETS["spectro-2b"]()
    with pytest.raises(CheckpointError, match="head count"):
        ltx_ckpt.from_weights(_tiny().state_dict())  # width 16: not 32 heads
    with pytest.raises(CheckpointError, match="cannot infer"):
        ltx_ckpt.from_weights({})


def test_unsupported_configs_raise():
    with pytest.raises(CheckpointError, match="patch_size"):
        ltx_ckpt.from_diffusers({**DIFFUSERS_2B, "patch_size": 2})
    with pytest.raises(CheckpointError, match="cross_attention_dim"):
        ltx_ckpt.from_diffusers({**DIFFUSERS_2B, "cross_attention_dim": 4096})
    with pytest.raises(CheckpointError, match="norm_elementwise_affine"):
        ltx_ckpt.from_diffusers({**DIFFUSERS_2B, "norm_elementwise_affine": True})
    with pytest.raises(CheckpointError, match="window_size"):
        ltx_ckpt.from_diffusers({**DIFFUSERS_2B, "window_size": 8})
    with pytest.raises(CheckpointError, match="_class_name"):
        ltx_ckpt.from_diffusers({**DIFFUSERS_2B, "_class_name": "WanTransformer3DModel"})
    with pytest.raises(CheckpointError, match="standardization_norm"):
        ltx_ckpt.from_original({**ORIGINAL_2B, "standardization_norm": "layer_norm"})
    with pytest.raises(CheckpointError, match="timestep_scale_multiplier"):
        ltx_ckpt.from_original({k: v for k, v in ORIGINAL_2B.items() if k != "timestep_scale_multiplier"})
    with pytest.raises(CheckpointError, match="ffn_dim"):
        ltx_ckpt.to_diffusers(replace(TINY, ffn_dim=48))
    with pytest.raises(KinemaError, match="multiple of num_heads"):
        LTXTransformerConfig(dim=18, ffn_dim=72, num_heads=4, num_layers=1)


# ------------------------------------------------------------------------------------------------
# Positions
# ------------------------------------------------------------------------------------------------
def test_rope_tables():
    positions = ltx_positions((3, 2, 4), SCALE)  # (1, 24, 3)
    assert positions.shape == (1, 24, 3)
    # token (f=2, h=1, w=3): index * scale / (20, 2048, 2048)
    expected = torch.tensor([2 * SCALE[0] / 20, 1 * 32 / 2048, 3 * 32 / 2048])
    torch.testing.assert_close(positions[0, 2 * 8 + 1 * 4 + 3], expected)
    cos, sin = ltx_rope(positions, 16)  # 16 % 6 = 4: the first 2 pairs are not rotated
    assert cos.shape == sin.shape == (1, 24, 8)
    assert torch.equal(cos[..., :2], torch.ones(1, 24, 2)) and torch.equal(sin[..., :2], torch.zeros(1, 24, 2))
    # then frequency 0 (= pi/2) for t, h, w: angle pi/2 * (2p - 1)
    torch.testing.assert_close(sin[0, :, 2:5], torch.sin(torch.pi / 2 * (2 * positions[0] - 1)))


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------
def test_output_shape():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    with torch.no_grad():
        out = model(x, t, context, rope_scale=SCALE)
    assert out.shape == (2, TINY.out_dim, 3, 2, 4) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_timestep_forms_agree():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    n = 3 * 2 * 4
    with torch.no_grad():
        per_sample = model(x, t, context, rope_scale=SCALE)
        per_token = model(x, t[:, None].expand(2, n), context, rope_scale=SCALE)
        per_voxel = model(x, t[:, None, None, None].expand(2, 3, 2, 4), context, rope_scale=SCALE)
        scalar = model(x[:1], t[0], context[:1], rope_scale=SCALE)
    torch.testing.assert_close(per_token, per_sample, rtol=0, atol=1e-6)
    assert torch.equal(per_voxel, per_token)
    torch.testing.assert_close(scalar, per_sample[:1], rtol=0, atol=1e-6)  # a scalar broadcasts (batch 1 vs 2 rounding)


def test_image_to_video_timesteps_change_only_through_the_first_frame():
    """First-frame tokens at t=0 (image-to-video) give a different prediction than a uniform t."""
    model = _tiny()
    x, t, context = _inputs()
    per_token = t[:, None].repeat(1, 24)
    per_token[:, :8] = 0.0  # the 2 x 4 tokens of latent frame 0
    with torch.no_grad():
        uniform = model(x, t, context, rope_scale=SCALE)
        i2v = model(x, per_token, context, rope_scale=SCALE)
    assert (i2v - uniform).abs().max() > 1e-3


def test_masked_padding_equals_no_padding():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    padded = torch.cat([context, torch.randn(2, 5, TINY.text_dim)], dim=1)  # 5 junk tokens
    mask = torch.cat([torch.ones(2, 7), torch.zeros(2, 5)], dim=1)
    with torch.no_grad():
        plain = model(x, t, context, rope_scale=SCALE)
        masked = model(x, t, padded, mask, rope_scale=SCALE)
        masked_bool = model(x, t, padded, mask.bool(), rope_scale=SCALE)
        unmasked = model(x, t, padded, rope_scale=SCALE)
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-5)
    assert torch.equal(masked_bool, masked)
    assert (unmasked - plain).abs().max() > 1e-3  # the junk tokens matter when not masked


def test_coords_equal_rope_scale_grid():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (3, 2, 4)), indexing="ij"))  # (3, F, H, W)
    coords = (grid.reshape(3, -1) * torch.tensor(SCALE)[:, None]).expand(2, 3, 24)  # (B, 3, N)
    with torch.no_grad():
        a = model(x, t, context, rope_scale=SCALE)
        b = model(x, t, context, coords=coords)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_prepared_context_is_bit_identical_and_checked():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    mask = torch.tensor([[1.0] * 7, [1.0] * 4 + [0.0] * 3])
    with torch.no_grad():
        prepared = model.prepare_context(context, mask)
        assert torch.equal(model(x, t, prepared, rope_scale=SCALE), model(x, t, context, mask, rope_scale=SCALE))
        with pytest.raises(ValueError, match="conditioning has batch 2"):
            model(x[:1], t[:1], prepared, rope_scale=SCALE)
        with pytest.raises(ValueError, match="prepare_context"):
            model(x, t, prepared, mask, rope_scale=SCALE)


def test_bad_inputs_raise():
    model = _tiny()
    x, t, context = _inputs(batch=2)
    with pytest.raises(ValueError, match="exactly one of rope_scale"):
        model(x, t, context)
    with pytest.raises(ValueError, match="exactly one of rope_scale"):
        model(x, t, context, rope_scale=SCALE, coords=torch.zeros(2, 3, 24))
    with pytest.raises(ValueError, match="coords has shape"):
        model(x, t, context, coords=torch.zeros(2, 3, 23))
    with pytest.raises(ValueError, match="timestep has shape"):
        model(x, torch.zeros(2, 23), context, rope_scale=SCALE)
    with pytest.raises(ValueError, match="timestep has shape"):
        model(x, torch.zeros(3), context, rope_scale=SCALE)
    with pytest.raises(ValueError, match="context_mask has shape"):
        model(x, t, context, torch.ones(2, 6), rope_scale=SCALE)


def test_init_weights_starts_from_identity_blocks():
    model = _tiny()
    model.init_weights()
    x, t, context = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, context, rope_scale=SCALE), torch.zeros(1, TINY.out_dim, 3, 2, 4))
    assert model.time_embedding[0].weight.std() < 0.05 and model.blocks[0].self_attn.q.weight.abs().max() > 0


# ------------------------------------------------------------------------------------------------
# The model contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# key maps, bf16 with float32 modules
# ------------------------------------------------------------------------------------------------
class TestLTXTransformerContract(ModelContract):
    """Golden values computed once, after the diffusers parity tests passed."""

    keeps_fp32 = True
    bf16_fp32_inputs = (1,)  # the timestep stays float32
    golden = [
        -0.32962528, -0.39897391, 0.01975855, -0.01498914,
        -0.72358173, -1.31261516, -0.48219615, -0.89452988,
        -1.05457687, -1.10960126, 0.42912897, -1.20457935,
        0.46904844,  # mean |out|
    ]  # fmt: skip

    def build(self) -> LTXTransformer:
        return LTXTransformer(TINY)

    def inputs(self):
        return _inputs()

    def run(self, model, inputs):
        x, t, context, *mask = inputs
        return model(x, t, context, *mask, rope_scale=SCALE)

    def bf16_case(self):
        x, t, context = _inputs(batch=2)
        return x, t, context, torch.tensor([[1] * 7, [1] * 5 + [0] * 2])  # a padded second prompt

    def golden_slice(self, out):
        return torch.cat([out[0, :3, 1, 1, :4].flatten(), out.abs().mean()[None]])

    def key_maps(self):
        return [DIFFUSERS_KEYS, ORIGINAL_KEYS]
