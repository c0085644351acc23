"""kinema's Wan 2.1 VAE on tiny CPU configs: sizes, shapes, chunking, determinism, golden values."""

from __future__ import annotations

import pytest
import torch

from kinema.checkpoints import wan_vae as wan_vae_ckpt
from kinema.checkpoints.io import build_on_meta
from kinema.errors import CheckpointError, KinemaError
from kinema.models.vae import CausalCache, CausalConv3d, WanVAE, WanVAEConfig
from tests.contracts import CodecContract

TINY = WanVAEConfig(
    base_dim=4,
    z_dim=4,
    dim_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    latents_mean=(0.1, -0.2, 0.3, 0.0),
    latents_std=(1.5, 0.5, 2.0, 1.0),
)


def tiny_vae(seed: int = 0, config: WanVAEConfig = TINY) -> WanVAE:
    """A seeded tiny VAE with its norm gammas perturbed away from one."""
    torch.manual_seed(seed)
    model = WanVAE(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.requires_grad_(False)


def video(frames: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def latents(frames: int, size: int = 2, seed: int = 2, z_dim: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, z_dim, frames, size, size, generator=g)


# ------------------------------------------------------------------------------------------------
# Config and size
# ------------------------------------------------------------------------------------------------
def test_default_parameter_count_on_meta():
    model = build_on_meta(WanVAE)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 126_892_531  # diffusers AutoencoderKLWan()
    assert model.temporal_compression == 4 and model.spatial_compression == 8


def test_config_round_trips_through_diffusers_dict():
    for config in (WanVAEConfig(), TINY):
        d = wan_vae_ckpt.to_diffusers(config)
        assert d["_class_name"] == "AutoencoderKLWan" and d["temperal_downsample"] == [False, True, True]
        assert wan_vae_ckpt.from_diffusers(d) == config
    # an old config.json with only the fields of its time
    old = {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16}
    assert wan_vae_ckpt.from_diffusers(old) == WanVAEConfig()


def test_unsupported_config_values_raise():
    with pytest.raises(CheckpointError, match="attn_scales"):
        WanVAEConfig(attn_scales=(1.0,))
    with pytest.raises(CheckpointError, match="latents_mean"):
        WanVAEConfig(z_dim=4)
    with pytest.raises(CheckpointError, match="is_residual"):
        wan_vae_ckpt.from_diffusers(dict(wan_vae_ckpt.to_diffusers(WanVAEConfig()), is_residual=True))
    with pytest.raises(CheckpointError, match="scale_factor_spatial"):
        wan_vae_ckpt.from_diffusers(dict(wan_vae_ckpt.to_diffusers(WanVAEConfig()), scale_factor_spatial=16))
    with pytest.raises(CheckpointError, match="AutoencoderKLWan"):
        wan_vae_ckpt.from_diffusers({"_class_name": "AutoencoderKL"})


# ------------------------------------------------------------------------------------------------
# Shapes and inputs
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_actionable_errors():
    vae = tiny_vae()
    with pytest.raises(KinemaError, match="4k\\+1 .* got 30, try 29 or 33"):
        vae.encode(video(30))
    with pytest.raises(KinemaError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 16, 12))
    with pytest.raises(KinemaError, match="multiple of 4"):
        vae.encode(video(9), chunk_size=6)
    with pytest.raises(KinemaError, match="latents must be"):
        vae.decode(torch.zeros(1, 16, 2, 2, 2))
    with pytest.raises(KinemaError, match="latents must be"):
        vae.decode(torch.zeros(4, 2, 2, 2))


# ------------------------------------------------------------------------------------------------
# Chunking, streaming
# ------------------------------------------------------------------------------------------------
def test_causal_conv_in_chunks_equals_one_pass():
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 9, 6, 7)
    whole = conv(x)  # causal zero padding, no cache
    cache = CausalCache()
    parts = [conv(x[:, :, a:b], cache) for a, b in [(0, 1), (1, 5), (5, 6), (6, 9)]]
    assert torch.allclose(torch.cat(parts, dim=2), whole, atol=1e-6)
    assert cache.get(conv).shape == (2, 3, 2, 6, 7)


@torch.no_grad()
def test_chunk_size_does_not_change_results():
    vae = tiny_vae()
    x = video(17)
    assert torch.allclose(vae.encode(x, chunk_size=8).mean, vae.encode(x).mean, atol=1e-6)
    z = latents(5)
    for chunk_size in (2, 3, 8):
        assert torch.allclose(vae.decode(z, chunk_size=chunk_size), vae.decode(z), atol=2e-5)  # summation order only


@torch.no_grad()
def test_decode_iter_streams_frames_and_continues_with_its_cache():
    vae = tiny_vae()
    z = latents(5)
    chunks = list(vae.decode_iter(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4, 4]
    full = vae.decode(z)
    assert torch.equal(torch.cat(chunks, dim=2), full)
    cache = CausalCache()
    first = list(vae.decode_iter(z[:, :, :2], cache=cache))
    rest = list(vae.decode_iter(z[:, :, 2:], cache=cache))  # continues the same video
    assert [c.shape[2] for c in rest] == [4, 4, 4]
    assert torch.equal(torch.cat(first + rest, dim=2), full)


# ------------------------------------------------------------------------------------------------
# dtypes, gradients, normalisation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_bfloat16_runs_close_to_float32():
    vae = tiny_vae()
    z = latents(2)
    want = vae.decode(z)
    vae16 = tiny_vae().to(torch.bfloat16)
    got = vae16.decode(z)  # latents are cast to the model's dtype
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert (got.float() - want).abs().max() < 0.05
    assert vae16.encode(video(5)).mean.dtype == torch.bfloat16


def test_gradients_flow_and_match_the_inference_path():
    vae = tiny_vae().requires_grad_(True)
    z = latents(2).requires_grad_(True)
    out = vae.decode(z)
    out.square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert vae.decoder.conv1.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(vae.decode(z), out, atol=1e-6)


def test_latent_normalisation():
    vae = tiny_vae()
    z = latents(3)
    mean = torch.tensor(TINY.latents_mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(TINY.latents_std).view(1, 4, 1, 1, 1)
    assert torch.allclose(vae.normalize_latents(z), (z - mean) / std)
    assert torch.allclose(vae.denormalize_latents(vae.normalize_latents(z)), z, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The codec contract (tests/contracts.py): meta build, strict load, determinism, golden values,
# key maps, VideoCodec shapes. Golden values computed once parity with diffusers passed: a change
# here is a change in outputs.
# ------------------------------------------------------------------------------------------------
class TestWanVAEContract(CodecContract):
    compressions = (4, 8)
    golden = [
        0.04959070, -0.29978168, -0.26299572, -0.35137349, 0.07766232, 0.06590252,
        0.02007650, 0.15535685, -0.02570126, -0.11197377, 0.05762415, -0.06638983,  # decoded pixels
        0.08422841, -0.20813341, -0.26389858, 0.31867087,  # the posterior's mean
    ]  # fmt: skip

    def build(self) -> WanVAE:
        return WanVAE(TINY)

    def make_model(self, seed: int | None = None) -> WanVAE:
        return tiny_vae(self.seed if seed is None else seed)

    def inputs(self):
        return latents(3, seed=7), video(9, seed=8)

    def run(self, model, inputs):
        z, x = inputs
        return model.decode(z), model.encode(x).mean

    def golden_slice(self, out):
        decoded, mean = out
        return torch.cat([decoded[0, :, -1, 5, :4].flatten(), mean[0, :, -1, 1, 1]])

    def key_maps(self):
        return [wan_vae_ckpt.diffusers_keys(TINY), wan_vae_ckpt.original_keys(TINY)]
