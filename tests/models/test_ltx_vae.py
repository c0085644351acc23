"""kinema's LTX-Video VAE on tiny CPU configs: config, shapes, streaming, bounded memory, noise, golden values."""

from __future__ import annotations

import pytest
import torch

from kinema.checkpoints import ltx_vae as ltx_vae_ckpt
from kinema.checkpoints.io import build_on_meta
from kinema.errors import CheckpointError, KinemaError
from kinema.models.vae.ltx_vae import LTX_VAE_PRESETS, LTXVAE, LTXVAEConfig
from kinema.models.vae.ltx_vae_blocks import LTXConv3d, flush_groups
from tests.contracts import CodecContract

# LTX's structure (patch 4, three 2x resamplers: 32x32x8) at widths 4..32 with one resnet per stage.
TINY_090 = LTXVAEConfig(
    latent_channels=4,
    block_out_channels=(4, 8, 8, 8),
    decoder_block_out_channels=(4, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
)
TINY_091 = LTXVAEConfig(
    latent_channels=4,
    block_out_channels=(4, 8, 8, 8),
    decoder_block_out_channels=(8, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 2),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(True, True, True, False),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    timestep_conditioning=True,
)


def tiny_vae(config: LTXVAEConfig = TINY_090, seed: int = 0) -> LTXVAE:
    """A seeded tiny VAE with noise scales and latent statistics away from their defaults."""
    torch.manual_seed(seed)
    model = LTXVAE(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "per_channel_scale" in name:
                p.normal_(0.0, 0.5)
        model.latents_mean.normal_()
        model.latents_std.uniform_(0.5, 2.0)
    return model.requires_grad_(False)


def video(frames: int, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1  # (1, 3, F, H, W) in [-1, 1]


def latents(frames: int, size: int = 2, seed: int = 2, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, frames, size, size, generator=g)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Config and size
# ------------------------------------------------------------------------------------------------
def test_preset_parameter_counts_on_meta():
    counts = {"ltx-video-0.9.0": 419_193_649, "ltx-video-0.9.1": 934_976_434, "ltx-video-0.9.5": 1_246_913_522}
    for name, make in LTX_VAE_PRESETS.items():
        model = build_on_meta(lambda: LTXVAE(make()))
        assert all(p.is_meta for p in model.parameters())
        assert sum(p.numel() for p in model.parameters()) == counts[name], name  # diffusers' counts
        assert model.temporal_compression == 8 and model.spatial_compression == 32


def test_config_round_trips_through_diffusers_dict():
    for config in (*(make() for make in LTX_VAE_PRESETS.values()), TINY_090, TINY_091):
        d = ltx_vae_ckpt.to_diffusers(config)
        assert d["_class_name"] == "AutoencoderKLLTXVideo"
        assert (d["spatial_compression_ratio"], d["temporal_compression_ratio"]) == (32, 8)
        assert ltx_vae_ckpt.from_diffusers(d) == config
    # a config.json with only the fields of its time, nulls for the derived ratios
    old = {"_class_name": "AutoencoderKLLTXVideo", "latent_channels": 128, "spatial_compression_ratio": None}
    assert ltx_vae_ckpt.from_diffusers(old) == LTXVAEConfig()


# The original CausalVideoAutoencoder configs (the "vae" entry of a single file's metadata; 0.9.0 and
# 0.9.1 as quoted in diffusers' scripts/convert_ltx_to_diffusers.py).
_UP_091 = {"residual": True, "multiplier": 2}
ORIGINAL_090 = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "blocks": [["res_x", 4], ["compress_all", 1], ["res_x_y", 1], ["res_x", 3], ["compress_all", 1], ["res_x_y", 1],
               ["res_x", 3], ["compress_all", 1], ["res_x", 3], ["res_x", 4]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False,
}  # fmt: skip
ORIGINAL_091 = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_all", {}], ["res_x_y", 1], ["res_x", {"num_layers": 3}],
                       ["compress_all", {}], ["res_x_y", 1], ["res_x", {"num_layers": 3}], ["compress_all", {}],
                       ["res_x", {"num_layers": 3}], ["res_x", {"num_layers": 4}]],
    "decoder_blocks": [["res_x", {"num_layers": 5, "inject_noise": True}], ["compress_all", _UP_091],
                       ["res_x", {"num_layers": 6, "inject_noise": True}], ["compress_all", _UP_091],
                       ["res_x", {"num_layers": 7, "inject_noise": True}], ["compress_all", _UP_091],
                       ["res_x", {"num_layers": 8, "inject_noise": False}]],
    "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
    "use_quant_conv": False, "causal_decoder": False, "timestep_conditioning": True,
}  # fmt: skip
ORIGINAL_095_ENCODER = [
    ["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}], ["res_x", {"num_layers": 6}],
    ["compress_time_res", {"multiplier": 2}], ["res_x", {"num_layers": 6}], ["compress_all_res", {"multiplier": 2}],
    ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 2}], ["res_x", {"num_layers": 2}],
]  # fmt: skip


def test_original_configs_give_the_presets():
    assert ltx_vae_ckpt.from_original(ORIGINAL_090) == LTX_VAE_PRESETS["ltx-video-0.9.0"]()
    assert ltx_vae_ckpt.from_original(ORIGINAL_091) == LTX_VAE_PRESETS["ltx-video-0.9.1"]()
    decoder_095 = [[n, dict(p, inject_noise=False) if n == "res_x" else p] for n, p in ORIGINAL_091["decoder_blocks"]]
    decoder_095 = [[n, dict(p, num_layers=5) if n == "res_x" else p] for n, p in decoder_095]
    original_095 = dict(ORIGINAL_091, encoder_blocks=ORIGINAL_095_ENCODER, decoder_blocks=decoder_095, extra_key="ignored")
    assert ltx_vae_ckpt.from_original(original_095) == LTX_VAE_PRESETS["ltx-video-0.9.5"]()


def test_unsupported_configs_raise():
    with pytest.raises(CheckpointError, match="patch_size_t"):
        LTXVAEConfig(patch_size_t=2)
    with pytest.raises(CheckpointError, match="decoder_inject_noise"):
        LTXVAEConfig(decoder_inject_noise=(False,) * 4)
    with pytest.raises(CheckpointError, match="timestep conditioning"):  # 0.9.0's decoder changes widths in resnets
        LTXVAEConfig(timestep_conditioning=True)
    with pytest.raises(CheckpointError, match="mystery"):
        ltx_vae_ckpt.from_diffusers(dict(ltx_vae_ckpt.to_diffusers(LTXVAEConfig()), mystery=1))
    with pytest.raises(CheckpointError, match="spatial_compression_ratio"):
        ltx_vae_ckpt.from_diffusers(dict(ltx_vae_ckpt.to_diffusers(LTXVAEConfig()), spatial_compression_ratio=64))
    with pytest.raises(CheckpointError, match="AutoencoderKLLTXVideo"):
        ltx_vae_ckpt.from_diffusers({"_class_name": "AutoencoderKLWan"})
    with pytest.raises(CheckpointError, match="norm_layer"):
        ltx_vae_ckpt.from_original(dict(ORIGINAL_090, norm_layer="group_norm"))
    with pytest.raises(CheckpointError, match="spatial_padding_mode"):
        ltx_vae_ckpt.from_original(dict(ORIGINAL_090, spatial_padding_mode="reflect"))
    ltx2_decoder = [["res_x", 4], ["compress_space", {"multiplier": 2}], ["res_x", 4]]
    with pytest.raises(CheckpointError, match="compress_space"):
        ltx_vae_ckpt.from_original(dict(ORIGINAL_091, decoder_blocks=ltx2_decoder))


# ------------------------------------------------------------------------------------------------
# Shapes and inputs
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_log_variance_is_one_shared_channel():
    post = tiny_vae().encode(video(9))
    assert torch.equal(post.logvar, post.logvar[:, :1].expand_as(post.logvar))


def test_bad_inputs_raise_actionable_errors():
    vae, vae91 = tiny_vae(), tiny_vae(TINY_091)
    with pytest.raises(KinemaError, match=r"8k\+1 .* got 10, try 9 or 17"):
        vae.encode(video(10))
    with pytest.raises(KinemaError, match="multiples of 32"):
        vae.encode(video(9, size=48))
    with pytest.raises(KinemaError, match="multiple of 8"):
        vae.encode(video(17), chunk_size=4)
    with pytest.raises(KinemaError, match="latents must be"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(KinemaError, match="not timestep-conditioned"):
        vae.decode(latents(2), timestep=0.05)
    with pytest.raises(KinemaError, match="chunk_size"):
        vae.decode(latents(2), chunk_size=0)
    with pytest.raises(KinemaError, match="1 or 2 values"):
        vae91.decode(latents(2, batch=2), timestep=[0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------------
# Streaming: chunked = one pass, and memory bounded by the chunk, not the clip
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("config", [TINY_090, TINY_091], ids=["0.9.0", "0.9.1"])
def test_chunked_encode_and_decode_equal_one_pass(config):
    vae = tiny_vae(config)
    x = video(25)
    whole = vae.encode(x).mean
    for chunk_size in (8, 16):
        assert torch.allclose(vae.encode(x, chunk_size=chunk_size).mean, whole, atol=1e-5)
    z = latents(5)
    kw = dict(timestep=0.05, decode_noise_scale=0.025) if config.timestep_conditioning else {}
    one_pass = vae.decode(z, generator=_gen(), chunk_size=None, **kw)
    for chunk_size in (1, 2, 3, 8):
        got = vae.decode(z, generator=_gen(), chunk_size=chunk_size, **kw)
        assert (got - one_pass).abs().max() <= 1e-5, chunk_size  # summation order only
    pieces = list(vae.decode_iter(z, generator=_gen(), chunk_size=2, **kw))
    assert len(pieces) > 1
    assert torch.equal(torch.cat(pieces, dim=2), vae.decode(z, generator=_gen(), chunk_size=2, **kw))


@torch.no_grad()
def test_decode_memory_is_bounded_by_the_chunk():
    """Every convolution of the decoder sees at most ``chunk`` latent frames' worth of new frames per
    step, however long the clip: 2 latent frames at conv_in, 2 x 8 pixel frames at conv_out."""
    vae = tiny_vae(TINY_091)
    frames: dict[str, list[int]] = {}

    def count(name):
        return lambda module, args: frames.setdefault(name, []).append(args[0].shape[2])

    hooks = [m.register_forward_pre_hook(count("any")) for m in vae.decoder.modules() if isinstance(m, LTXConv3d)]
    hooks.append(vae.decoder.conv_in.register_forward_pre_hook(count("conv_in")))
    hooks.append(vae.decoder.conv_out.register_forward_pre_hook(count("conv_out")))
    seen = {}
    for t in (6, 24):
        frames.clear()
        out = vae.decode(latents(t, size=1), timestep=0.05, chunk_size=2)
        assert out.shape[2] == 8 * (t - 1) + 1
        seen[t] = {name: max(v) for name, v in frames.items()}
        assert len(frames["conv_out"]) > t // 2  # many steps...
    for h in hooks:
        h.remove()
    assert seen[6] == seen[24]  # ...each no bigger for a clip four times as long
    assert seen[24]["conv_in"] <= 2 and seen[24]["conv_out"] <= 8 * 2
    frames.clear()


def test_flush_groups_respect_the_budget():
    lags = [1, 2, 2, 1, 1, 0.5, 0.5, 0.25, 0.125]
    ends = flush_groups(lags, 2)
    assert ends[-1] == len(lags)
    starts = [0, *ends[:-1]]
    assert all(sum(lags[a:b]) <= 2 or b - a == 1 for a, b in zip(starts, ends))
    assert flush_groups(lags, 100) == [len(lags)]


# ------------------------------------------------------------------------------------------------
# Decode timestep and noise
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_decode_noise_follows_the_generator():
    vae = tiny_vae(TINY_091)
    z = latents(3)
    a = vae.decode(z, timestep=0.05, decode_noise_scale=0.025, generator=_gen(1))
    assert torch.equal(a, vae.decode(z, timestep=0.05, decode_noise_scale=0.025, generator=_gen(1)))
    assert not torch.equal(a, vae.decode(z, timestep=0.05, decode_noise_scale=0.025, generator=_gen(2)))
    clean = vae.decode(z, timestep=0.05, decode_noise_scale=0.0, generator=_gen(1))
    assert not torch.equal(a, clean)
    assert not torch.equal(clean, vae.decode(z, timestep=0.5, decode_noise_scale=0.0, generator=_gen(1)))


@torch.no_grad()
def test_per_sample_timesteps_decode_like_single_samples():
    vae = tiny_vae(TINY_091)
    z = latents(2, batch=2)
    both = vae.decode(z, timestep=[0.05, 0.3], decode_noise_scale=0.0, generator=_gen())
    for i, t in enumerate((0.05, 0.3)):  # injected noise is spatial only: the same for every sample
        one = vae.decode(z[i : i + 1], timestep=t, decode_noise_scale=0.0, generator=_gen())
        assert (both[i : i + 1] - one).abs().max() <= 1e-5  # batch size changes summation order only


# ------------------------------------------------------------------------------------------------
# Gradients, normalisation
# ------------------------------------------------------------------------------------------------
def test_gradients_flow_through_the_stream():
    vae = tiny_vae(TINY_091).requires_grad_(True)
    z = latents(2).requires_grad_(True)
    out = vae.decode(z, timestep=0.05, generator=_gen(), chunk_size=1)
    out.square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert vae.decoder.conv_in.conv.weight.grad is not None
    assert vae.decoder.last_time_embedder[0].weight.grad is not None


def test_latent_normalisation():
    vae = tiny_vae()
    z = latents(3)
    mean, std = vae.latents_mean.view(1, 4, 1, 1, 1), vae.latents_std.view(1, 4, 1, 1, 1)
    assert torch.allclose(vae.normalize_latents(z), (z - mean) / std)
    assert torch.allclose(vae.denormalize_latents(vae.normalize_latents(z)), z, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# The codec contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# key maps, bf16 with float32 latent statistics, VideoCodec shapes. Golden values computed once
# parity with diffusers passed: a change here is a change in outputs.
# ------------------------------------------------------------------------------------------------
class TestLTXVAEContract(CodecContract):
    """0.9.1's layout: a timestep-conditioned decoder that injects noise."""

    config: LTXVAEConfig = TINY_091
    compressions = (8, 32)
    latent_frames = (1, 2)  # 1 and 9 frames
    latent_grid = (1, 2)  # 32 x 64 pixels
    keeps_fp32 = True
    golden = [
        0.11008048, 1.0, 0.14881828, -0.61582458, 0.21097966, -0.05369528,
        -0.59222871, 0.34634826, 0.3388871, -0.42759615, -0.03329134, 0.02774452,  # decoded pixels
        0.11210264, -0.09151968, 0.52747416, 0.08396781,  # the posterior's mean
    ]  # fmt: skip

    def build(self) -> LTXVAE:
        return LTXVAE(self.config)

    def make_model(self, seed: int | None = None) -> LTXVAE:
        return tiny_vae(self.config, self.seed if seed is None else seed)

    def inputs(self):
        return latents(3, seed=7), video(17, seed=8)

    def run(self, model, inputs):
        z, x = inputs
        kw = dict(timestep=0.05, decode_noise_scale=0.025, generator=_gen(3)) if self.config.timestep_conditioning else {}
        return model.decode(z, **kw), model.encode(x).mean

    def bf16_case(self):
        return latents(2), video(9)

    def golden_slice(self, out):
        decoded, mean = out
        return torch.cat([decoded[0, :, -1, 37, 20:24].flatten(), mean[0, :, -1, 1, 1]])

    def key_maps(self):
        return [ltx_vae_ckpt.diffusers_keys(self.config), ltx_vae_ckpt.ORIGINAL_KEYS]


class TestLTXVAE090Contract(TestLTXVAEContract):
    """0.9.0's layout: an unconditioned decoder that changes widths inside its resnets."""

    config = TINY_090
    golden = [
        -0.55293882, -0.18983047, 0.20727462, 0.30193612, 0.29585052, -0.02517975,
        -0.03246450, 0.10573927, 0.29280287, 0.04849154, -0.06659703, 0.00308242,  # decoded pixels
        0.11210264, -0.09151968, 0.52747416, 0.08396781,  # the posterior's mean (the same encoder as 0.9.1's)
    ]  # fmt: skip
