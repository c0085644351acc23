"""kinema's Wan 2.1 VAE against diffusers' AutoencoderKLWan, through the real loaders.

A tiny random diffusers model is saved with ``save_pretrained`` (and re-saved in the original Wan
layout) and loaded with :func:`load_wan_vae`; encode and decode must match diffusers in float32.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from kinema.checkpoints import wan_vae as wan_vae_ckpt
from kinema.checkpoints.io import build_on_meta
from kinema.checkpoints.wan_vae import load_wan_vae
from kinema.checkpoints.wan_vae import diffusers_keys, original_keys
from kinema.errors import CheckpointError
from kinema.models.vae import CausalCache, WanVAE, WanVAEConfig

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers  # noqa: E402

TOL = 1e-4
# Wan's layout at a tiny width (base_dim 4: channels 4..16), and a flatter variant whose decoder
# has a shortcut conv in every stage after the first (a different index pattern for the key map).
TINY = {
    "wan-shaped": dict(base_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    "flat": dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
}
Z_DIM = 4
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.0]
LATENTS_STD = [1.5, 0.5, 2.0, 1.0]


def make_reference(seed: int = 0, **arch) -> AutoencoderKLWan:
    """A tiny random diffusers AutoencoderKLWan with perturbed norm gammas (so no map passes by luck)."""
    torch.manual_seed(seed)
    model = AutoencoderKLWan(
        z_dim=Z_DIM,
        temperal_downsample=[False, True, True],
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
        **arch,
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module", params=sorted(TINY))
def saved(request, tmp_path_factory):
    """(reference model, its diffusers directory)."""
    ref = make_reference(**TINY[request.param])
    directory = tmp_path_factory.mktemp(f"wan_vae_{request.param}") / "vae"
    ref.save_pretrained(str(directory))
    return ref, directory


def _video(frames: int = 13, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1  # (1, 3, F, H, W) in [-1, 1]


def _latents(frames: int = 4, size: int = 4, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, Z_DIM, frames, size, size, generator=g)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_encode_matches_diffusers(saved):
    ref, directory = saved
    ours = load_wan_vae(directory)
    x = _video()
    want = ref.encode(x).latent_dist
    got = ours.encode(x)
    assert got.mean.shape == want.mean.shape == (1, Z_DIM, 4, 4, 4)
    assert _max_diff(got.mean, want.mean) <= TOL
    assert _max_diff(got.logvar, want.logvar) <= TOL


@torch.no_grad()
def test_decode_matches_diffusers(saved):
    ref, directory = saved
    ours = load_wan_vae(directory)
    z = _latents()
    want = ref.decode(z).sample
    got = ours.decode(z)
    assert got.shape == want.shape == (1, 3, 13, 32, 32)
    assert _max_diff(got, want) <= TOL


@torch.no_grad()
def test_normalisation_matches_wan_pipeline(saved):
    """diffusers' WanPipeline decodes ``latents / (1 / std) + mean``."""
    ref, directory = saved
    ours = load_wan_vae(directory)
    z = _latents()
    mean = torch.tensor(ref.config.latents_mean).view(1, Z_DIM, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, Z_DIM, 1, 1, 1)
    assert _max_diff(ours.denormalize_latents(z), z / inv_std + mean) <= 1e-6
    assert _max_diff(ours.normalize_latents(z / inv_std + mean), z) <= 1e-5


# ------------------------------------------------------------------------------------------------
# The original layout and diffusers' own converter
# ------------------------------------------------------------------------------------------------
def _original_state(ref: AutoencoderKLWan, config: WanVAEConfig) -> dict[str, torch.Tensor]:
    ours = diffusers_keys(config).to_ours(ref.state_dict())
    return original_keys(config).to_theirs(ours)


@torch.no_grad()
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_original_layout_file_loads_the_same(saved, tmp_path, suffix):
    ref, directory = saved
    from_dir = load_wan_vae(directory)
    state = _original_state(ref, from_dir.config)
    path = tmp_path / f"Wan2.1_VAE{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    from_file = load_wan_vae(path, config=from_dir.config)
    for (k1, v1), (k2, v2) in zip(from_dir.state_dict().items(), from_file.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    z = _latents()
    assert torch.equal(from_file.decode(z), from_dir.decode(z))


def test_key_map_agrees_with_diffusers_converter():
    """diffusers' convert_wan_vae_to_diffusers (written for Wan's layout) sends our names to its own."""
    config = WanVAEConfig()  # the converter hard-codes the released model's block indices
    ours = build_on_meta(lambda: WanVAE(config)).state_dict()
    with torch.device("meta"):
        theirs = AutoencoderKLWan().state_dict()
    converted = convert_wan_vae_to_diffusers(original_keys(config).to_theirs(ours))
    assert sorted(converted) == sorted(theirs)
    assert diffusers_keys(config).to_theirs(ours).keys() == converted.keys()
    assert all(converted[k].shape == theirs[k].shape for k in theirs)  # no reshapes anywhere
    assert diffusers_keys(config).to_ours(theirs).keys() == ours.keys()


@torch.no_grad()
def test_diffusers_converter_output_runs_like_ours():
    """Tensors through our original layout, then diffusers' converter, into diffusers: same outputs."""
    ref = make_reference(seed=3, **TINY["wan-shaped"])
    config = wan_vae_ckpt.from_diffusers(dict(ref.config))
    converted = convert_wan_vae_to_diffusers(_original_state(ref, config))
    clone = AutoencoderKLWan(**dict(ref.config)).eval()
    clone.load_state_dict(converted, strict=True)
    z = _latents()
    assert torch.equal(clone.decode(z).sample, ref.decode(z).sample)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    ref, directory = saved
    config = load_wan_vae(directory).config
    state = _original_state(ref, config)
    missing = dict(state)
    del missing["decoder.head.2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.weight"):
        load_wan_vae(tmp_path / "missing.pth", config=config)
    extra = dict(state, **{"decoder.upsamples.99.residual.2.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.99\.residual\.2\.weight"):
        load_wan_vae(tmp_path / "extra.pth", config=config)
    stray = dict(state, **{"model.ema.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"model\.ema\.weight"):
        original_keys(config).to_ours(stray)
    theirs = dict(ref.state_dict(), **{"decoder.up_blocks.9.resnets.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"decoder\.up_blocks\.9\.resnets\.0\.conv1\.weight"):
        diffusers_keys(config).to_ours(theirs)


def test_wan22_config_is_refused(saved, tmp_path):
    _, directory = saved
    import json

    raw = json.loads((directory / "config.json").read_text())
    for field, value in [("is_residual", True), ("patch_size", 2), ("decoder_base_dim", 256), ("mystery", 1)]:
        bad = tmp_path / field
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(dict(raw, **{field: value})))
        with pytest.raises(CheckpointError, match=field):
            load_wan_vae(bad)


# ------------------------------------------------------------------------------------------------
# Memory does not grow with the number of frames
# ------------------------------------------------------------------------------------------------
def _profiled_peak_bytes(fn) -> int:
    """Peak of bytes allocated on the CPU while ``fn`` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@torch.no_grad()
def test_decode_memory_is_bounded(saved):
    """The cache stops growing after the third chunk and is the same for a video twice as long;
    so is the peak of everything allocated while streaming the frames out."""
    _, directory = saved
    ours = load_wan_vae(directory)
    sizes = {}
    for frames in (4, 8):
        cache = CausalCache()
        sizes[frames] = [cache.nbytes() for _ in ours.decode_iter(_latents(frames), cache=cache)]
    assert sizes[4] == sizes[8][:4]
    assert len(set(sizes[8][2:])) == 1
    peaks = {f: _profiled_peak_bytes(lambda: [None for _ in ours.decode_iter(_latents(f))]) for f in (4, 12)}
    assert peaks[4] > 0
    assert peaks[12] <= 1.05 * peaks[4], peaks
