"""kinema's LTX-Video VAE against diffusers' AutoencoderKLLTXVideo, through the real loaders.

Tiny random diffusers models of the three layouts (0.9.0; 0.9.1's timestep-conditioned decoder with
noise injection; 0.9.5's space-to-depth encoder) are saved with ``save_pretrained`` (and re-saved as
an original LTX-Video single file) and loaded with :func:`load_ltx_vae`; encode and decode must
match diffusers in float32, the decode also when streamed in chunks.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from kinema.checkpoints import ltx_vae as ltx_vae_ckpt
from kinema.checkpoints.io import build_on_meta
from kinema.checkpoints.ltx_vae import load_ltx_vae
from kinema.checkpoints.ltx_vae import ORIGINAL_KEYS, ORIGINAL_PREFIX, diffusers_keys
from kinema.errors import CheckpointError
from kinema.models.vae.ltx_vae import LTX_VAE_PRESETS, LTXVAE, LTXVAEConfig

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLLTXVideo, LTXPipeline  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers  # noqa: E402

TOL = 1e-4
# widths change in the first two stages, as in the release, so that diffusers' single-file converter
# (which hard-codes the released block indices) applies
_ENCODER = dict(latent_channels=4, block_out_channels=(4, 8, 16, 16), layers_per_block=(1, 1, 1, 1, 1))
_DECODER_091 = dict(
    decoder_block_out_channels=(8, 16, 32),
    decoder_layers_per_block=(1, 1, 1, 2),
    decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(True, True, True, False),
    upsample_residual=(True, True, True),
    upsample_factor=(2, 2, 2),
    timestep_conditioning=True,
)
# diffusers kwargs of each tiny layout (LTX's 32x32x8 compression at widths 4..32)
TINY = {
    "0.9.0": dict(_ENCODER, decoder_block_out_channels=(4, 8, 16, 16), decoder_layers_per_block=(1, 1, 1, 1, 1)),
    "0.9.1": dict(_ENCODER, **_DECODER_091),
    "0.9.5": dict(
        _ENCODER,
        **_DECODER_091,
        block_out_channels=(4, 8, 8, 16, 16),
        down_block_types=("LTXVideo095DownBlock3D",) * 4,
        spatio_temporal_scaling=(True, True, True, True),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    ),
}
# The same layouts as original CausalVideoAutoencoder configs (a single file's metadata)
_BLOCKS_090 = [["res_x", 1], ["compress_all", 1], ["res_x_y", 1], ["res_x", 1], ["compress_all", 1], ["res_x_y", 1],
               ["res_x", 1], ["compress_all", 1], ["res_x", 1], ["res_x", 1]]  # fmt: skip
_DECODER_BLOCKS_091 = [
    ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 1, "inject_noise": True}], ["compress_all", {"residual": True, "multiplier": 2}],
    ["res_x", {"num_layers": 2, "inject_noise": False}],
]  # fmt: skip
_ORIGINAL_COMMON = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "latent_channels": 4, "patch_size": 4, "norm_layer": "pixel_norm",
    "latent_log_var": "uniform", "use_quant_conv": False, "causal_decoder": False, "encoder_base_channels": 4,
}  # fmt: skip
ORIGINAL = {
    "0.9.0": dict(_ORIGINAL_COMMON, blocks=_BLOCKS_090, decoder_base_channels=4),
    "0.9.1": dict(_ORIGINAL_COMMON, encoder_blocks=_BLOCKS_090, decoder_blocks=_DECODER_BLOCKS_091,
                  decoder_base_channels=4, timestep_conditioning=True),
    "0.9.5": dict(_ORIGINAL_COMMON, decoder_blocks=_DECODER_BLOCKS_091, decoder_base_channels=4, timestep_conditioning=True,
                  encoder_blocks=[["res_x", 1], ["compress_space_res", {"multiplier": 2}], ["res_x", 1],
                                  ["compress_time_res", {"multiplier": 1}], ["res_x", 1],
                                  ["compress_all_res", {"multiplier": 2}], ["res_x", 1],
                                  ["compress_all_res", {"multiplier": 1}], ["res_x", 1]]),
}  # fmt: skip
DECODE_TIMESTEP, DECODE_NOISE_SCALE = 0.05, 0.025  # LTX-Video's recommended decode settings


def make_reference(layout: str, seed: int = 0) -> AutoencoderKLLTXVideo:
    """A tiny random diffusers VAE; noise scales and latent statistics perturbed (so no map passes by luck)."""
    torch.manual_seed(seed)
    model = AutoencoderKLLTXVideo(**TINY[layout]).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "per_channel_scale" in name:
                p.normal_(0.0, 0.5)
        model.latents_mean.normal_()
        model.latents_std.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module", params=sorted(TINY))
def saved(request, tmp_path_factory):
    """(layout, reference model, its diffusers directory)."""
    ref = make_reference(request.param)
    directory = tmp_path_factory.mktemp(f"ltx_vae_{request.param}") / "vae"
    ref.save_pretrained(str(directory))
    return request.param, ref, directory


def _video(frames: int = 17, size: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1  # (1, 3, F, H, W) in [-1, 1]


def _latents(frames: int = 4, size: int = 2, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, frames, size, size, generator=g)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def _reference_decode(ref: AutoencoderKLLTXVideo, z: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """What diffusers' LTXPipeline does after sampling: for a timestep-conditioned decoder, blend noise
    from the pipeline's generator into the latents, then decode with the decode timestep; the VAE's
    injected noise comes from the global generator, here continuing that generator's stream."""
    if not ref.config.timestep_conditioning:
        return ref.decode(z).sample
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(z.shape, generator=g)
    z = (1 - DECODE_NOISE_SCALE) * z + DECODE_NOISE_SCALE * noise
    torch.set_rng_state(g.get_state())
    return ref.decode(z, torch.tensor([DECODE_TIMESTEP])).sample


def _decode_kwargs(model: LTXVAE, seed: int = 7) -> dict:
    if not model.config.timestep_conditioning:
        return {}
    generator = torch.Generator().manual_seed(seed)
    return dict(timestep=DECODE_TIMESTEP, decode_noise_scale=DECODE_NOISE_SCALE, generator=generator)


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_encode_matches_diffusers(saved):
    _, ref, directory = saved
    ours = load_ltx_vae(directory)
    x = _video()
    want = ref.encode(x).latent_dist
    for chunk_size in (None, 8):
        got = ours.encode(x, chunk_size=chunk_size)
        assert got.mean.shape == want.mean.shape == (1, 4, 3, 2, 2)
        assert _max_diff(got.mean, want.mean) <= TOL
        assert _max_diff(got.logvar, want.logvar) <= TOL


@torch.no_grad()
def test_decode_matches_diffusers(saved):
    """One pass and streamed (the default chunks and single latent frames) against diffusers' one pass."""
    _, ref, directory = saved
    ours = load_ltx_vae(directory)
    z = _latents(5)
    want = _reference_decode(ref, z)
    assert (want.abs() < 1).float().mean() > 0.9  # kinema clamps to [-1, 1]: compare where it matters
    for chunk_size in (None, 4, 1):
        got = ours.decode(z, chunk_size=chunk_size, **_decode_kwargs(ours))
        assert got.shape == want.shape == (1, 3, 33, 64, 64)
        assert _max_diff(got, want.clamp(-1, 1)) <= TOL, chunk_size


@torch.no_grad()
def test_normalisation_matches_ltx_pipeline(saved):
    _, ref, directory = saved
    ours = load_ltx_vae(directory)
    z = _latents()
    stats = (ref.latents_mean, ref.latents_std, ref.config.scaling_factor)
    assert _max_diff(ours.denormalize_latents(z), LTXPipeline._denormalize_latents(z, *stats)) <= 1e-6
    assert _max_diff(ours.normalize_latents(z), LTXPipeline._normalize_latents(z, *stats)) <= 1e-6


# ------------------------------------------------------------------------------------------------
# The original single-file layout and diffusers' own converter
# ------------------------------------------------------------------------------------------------
def _original_file_state(ours: LTXVAE) -> dict[str, torch.Tensor]:
    """kinema's weights as an LTX-Video single file holds them: ``vae.``-prefixed original names, the
    statistics nothing reads, and a transformer beside them."""
    state = ORIGINAL_KEYS.to_theirs(ours.state_dict())
    c = ours.config.latent_channels
    state["per_channel_statistics.channel"] = torch.arange(c, dtype=torch.float32)
    state["per_channel_statistics.mean-of-stds"] = torch.ones(c)
    out = {ORIGINAL_PREFIX + k: v.contiguous() for k, v in state.items()}
    out["model.diffusion_model.patchify_proj.weight"] = torch.zeros(8, 4)
    return out


@torch.no_grad()
def test_original_single_file_loads_the_same(saved, tmp_path):
    layout, ref, directory = saved
    from_dir = load_ltx_vae(directory)
    assert ltx_vae_ckpt.from_original(ORIGINAL[layout]) == from_dir.config
    path = tmp_path / "ltx-video-2b.safetensors"
    metadata = {"config": json.dumps({"vae": ORIGINAL[layout], "transformer": {}})}
    save_file(_original_file_state(from_dir), str(path), metadata=metadata)
    from_file = load_ltx_vae(path)  # the config comes from the metadata
    assert from_file.config == from_dir.config
    for (k1, v1), (k2, v2) in zip(from_dir.state_dict().items(), from_file.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    z = _latents()
    got, want = from_file.decode(z, **_decode_kwargs(from_file)), from_dir.decode(z, **_decode_kwargs(from_dir))
    assert _max_diff(got, want) <= 1e-5  # equal weights; oneDNN's kernels depend on the mapped tensors' alignment
    bare = tmp_path / "no-metadata.safetensors"  # without metadata the config must be given
    save_file(_original_file_state(from_dir), str(bare))
    assert load_ltx_vae(bare, config=from_dir.config).config == from_dir.config
    with pytest.raises(CheckpointError, match="metadata config does not match"):
        load_ltx_vae(path, config=LTXVAEConfig())


@torch.no_grad()
def test_diffusers_layout_single_file_loads_the_same(saved, tmp_path):
    _, ref, directory = saved
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    from_dir = load_ltx_vae(directory)
    from_file = load_ltx_vae(path, config=from_dir.config)
    for (k1, v1), (k2, v2) in zip(from_dir.state_dict().items(), from_file.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("preset", sorted(LTX_VAE_PRESETS))
def test_key_maps_agree_with_diffusers_and_its_converter(preset):
    """At the released sizes (on meta): our diffusers map gives exactly diffusers' keys and shapes, and
    diffusers' single-file converter turns our original-layout keys into the same."""
    config = LTX_VAE_PRESETS[preset]()
    ours = build_on_meta(lambda: LTXVAE(config)).state_dict()
    with torch.device("meta"):
        kwargs = {k: v for k, v in ltx_vae_ckpt.to_diffusers(config).items() if not k.startswith("_")}
        theirs = AutoencoderKLLTXVideo(**kwargs).state_dict()
    mapped = diffusers_keys(config).to_theirs(ours)
    assert sorted(mapped) == sorted(theirs)
    assert all(mapped[k].shape == theirs[k].shape for k in theirs)  # a pure rename
    original = {ORIGINAL_PREFIX + k: v for k, v in ORIGINAL_KEYS.to_theirs(ours).items()}
    converted = convert_ltx_vae_checkpoint_to_diffusers(dict(original))
    assert sorted(converted) == sorted(theirs)
    # both maps invert
    assert diffusers_keys(config).to_ours(theirs).keys() == ours.keys()
    assert ORIGINAL_KEYS.to_ours(ORIGINAL_KEYS.to_theirs(ours)).keys() == ours.keys()


@torch.no_grad()
@pytest.mark.parametrize("layout", ["0.9.0", "0.9.1"])  # the converter tells 0.9.5 apart by full-size shapes
def test_diffusers_converter_output_runs_like_the_reference(layout):
    """Tensors through our original layout, then diffusers' converter, into diffusers: same outputs."""
    ref = make_reference(layout, seed=3)
    config = ltx_vae_ckpt.from_diffusers(dict(ref.config))
    ours = diffusers_keys(config).to_ours(ref.state_dict())
    original = {ORIGINAL_PREFIX + k: v for k, v in ORIGINAL_KEYS.to_theirs(ours).items()}
    clone = AutoencoderKLLTXVideo(**TINY[layout]).eval()
    clone.load_state_dict(convert_ltx_vae_checkpoint_to_diffusers(original), strict=True)
    z = _latents()
    assert torch.equal(_reference_decode(clone, z), _reference_decode(ref, z))


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    layout, _, directory = saved
    from_dir = load_ltx_vae(directory)
    state = _original_file_state(from_dir)
    missing = dict(state)
    del missing["vae.decoder.conv_out.conv.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.conv\.weight"):
        load_ltx_vae(tmp_path / "missing.safetensors", config=from_dir.config)
    extra = dict(state, **{"vae.decoder.up_blocks.99.res_blocks.0.conv1.conv.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"decoder\.up_blocks\.99\.res_blocks\.0\.conv1\.conv\.weight"):
        load_ltx_vae(tmp_path / "extra.safetensors", config=from_dir.config)
    stray = {"model.ema.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"model\.ema\.weight"):
        ORIGINAL_KEYS.to_ours(stray)
    theirs = {"decoder.up_blocks.9.resnets.0.conv1.conv.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"decoder\.up_blocks\.9\.resnets\.0\.conv1\.conv\.weight"):
        diffusers_keys(from_dir.config).to_ours(theirs)


def test_foreign_config_is_refused(saved, tmp_path):
    _, _, directory = saved
    raw = json.loads((directory / "config.json").read_text())
    for field, value in [("_class_name", "AutoencoderKLWan"), ("mystery", 1), ("patch_size_t", 2)]:
        bad = tmp_path / field
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(dict(raw, **{field: value})))
        with pytest.raises(CheckpointError, match=field if field != "_class_name" else "AutoencoderKLWan"):
            load_ltx_vae(bad)
