"""kinema's LTX-Video transformer against diffusers' LTXVideoTransformer3DModel, through the real loader.

A tiny random diffusers model is saved with ``save_pretrained`` and loaded by
``load_ltx_transformer``; the same weights are also written as an original single file (keys
renamed by kinema's map, ``model.diffusion_model.`` prefix, config in the metadata). Outputs must
agree to float32 rounding, with padded text, per-token timesteps and explicit coordinates, and the
key maps must agree with diffusers' own converter.
"""

from __future__ import annotations

import json

import pytest
import torch

from kinema.checkpoints import ltx as ltx_ckpt
from kinema.checkpoints.io import save_safetensors
from kinema.checkpoints.ltx import load_ltx_transformer
from kinema.checkpoints.ltx import DIFFUSERS_KEYS, ORIGINAL_KEYS
from kinema.errors import CheckpointError
from kinema.models.ltx import LTXTransformer, ltx_rope_scale

diffusers = pytest.importorskip("diffusers")
from diffusers import LTXVideoTransformer3DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers  # noqa: E402

TOL = 1e-4
# 2 heads of 10: width 20, so 20 % 6 = 2 channels at the front are not rotated
TINY = dict(
    in_channels=8, out_channels=6, num_attention_heads=2, attention_head_dim=10, cross_attention_dim=20,
    num_layers=2, caption_channels=12,
)  # fmt: skip
GRID = (3, 4, 5)  # latent (F, H, W): 60 tokens
SCALE = ltx_rope_scale(24, 8, 32)


@pytest.fixture(scope="module")
def tiny_ltx_diffusers_dir(tmp_path_factory):
    """(diffusers model, its save_pretrained directory) for a tiny random LTX transformer."""
    directory = tmp_path_factory.mktemp("ltx") / "transformer"
    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(**TINY)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random values for every parameter (norm weights around 1), so a swapped key shows up
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if "norm" in name else noise)
    model.save_pretrained(directory)  # config.json + diffusion_pytorch_model.safetensors
    return model.eval(), directory


def _inputs(batch: int = 2, seed: int = 0):
    """Latents, per-sample timesteps, 9 text tokens with the second prompt padded after 5 tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, TINY["in_channels"], *GRID, generator=g)
    t = torch.tensor([937.5, 12.25][:batch])
    text = torch.randn(batch, 9, TINY["caption_channels"], generator=g)
    mask = torch.ones(batch, 9, dtype=torch.long)
    mask[1:, 5:] = 0
    return x, t, text, mask


def _diffusers_out(model, x, t, text, mask, coords=None):
    """Run diffusers on packed tokens (as its pipelines do) and unpack to (B, C, F, H, W)."""
    b, c, f, h, w = x.shape
    packed = x.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c)  # diffusers' _pack_latents with patch 1
    kwargs = dict(video_coords=coords) if coords is not None else dict(num_frames=f, height=h, width=w, rope_interpolation_scale=SCALE)
    with torch.no_grad():
        out = model(packed, text, t, mask, return_dict=False, **kwargs)[0]  # (B, N, C)
    return out.reshape(b, f, h, w, -1).permute(0, 4, 1, 2, 3)  # (B, C, F, H, W)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _i2v_timesteps(t: torch.Tensor) -> torch.Tensor:
    """Per-token timesteps as LTXImageToVideoPipeline passes them: t * (1 - mask), frame 0 masked."""
    f, h, w = GRID
    mask = torch.zeros(1, f * h * w)
    mask[:, : h * w] = 1.0
    return t[:, None] * (1 - mask)  # (B, N)


# ------------------------------------------------------------------------------------------------
# Forward parity through the diffusers-layout loader
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_matches_diffusers(tiny_ltx_diffusers_dir, batch):
    ref, directory = tiny_ltx_diffusers_dir
    model = load_ltx_transformer(directory)
    x, t, text, mask = _inputs(batch)
    with torch.no_grad():
        ours = model(x, t, text, mask, rope_scale=SCALE)
    theirs = _diffusers_out(ref, x, t, text, mask)
    assert ours.shape == theirs.shape == (batch, 6, *GRID)
    assert _max_diff(ours, theirs) <= TOL


def test_per_token_timestep_matches_diffusers(tiny_ltx_diffusers_dir):
    ref, directory = tiny_ltx_diffusers_dir
    model = load_ltx_transformer(directory)
    x, t, text, mask = _inputs()
    t_tokens = _i2v_timesteps(t)  # (B, N)
    with torch.no_grad():
        ours = model(x, t_tokens, text, mask, rope_scale=SCALE)
        uniform = model(x, t, text, mask, rope_scale=SCALE)
    assert _max_diff(ours, _diffusers_out(ref, x, t_tokens, text, mask)) <= TOL
    assert _max_diff(ours, uniform) > 1e-2  # the first frame's timestep 0 matters


def test_video_coords_match_diffusers(tiny_ltx_diffusers_dir):
    ref, directory = tiny_ltx_diffusers_dir
    model = load_ltx_transformer(directory)
    x, t, text, mask = _inputs()
    g = torch.Generator().manual_seed(3)
    coords = torch.rand(2, 3, 60, generator=g) * torch.tensor([5.0, 256.0, 256.0])[:, None]  # (B, 3, N) seconds, pixels
    with torch.no_grad():
        ours = model(x, _i2v_timesteps(t), text, mask, coords=coords)
    assert _max_diff(ours, _diffusers_out(ref, x, _i2v_timesteps(t), text, mask, coords)) <= TOL


def test_pipeline_and_sharded_directories_load(tiny_ltx_diffusers_dir, tmp_path):
    ref, directory = tiny_ltx_diffusers_dir
    x, t, text, mask = _inputs()
    expected = _diffusers_out(ref, x, t, text, mask)
    ref.save_pretrained(tmp_path / "pipeline" / "transformer", max_shard_size="20KB")
    assert (tmp_path / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_ltx_transformer(tmp_path / "pipeline")  # a pipeline directory with a sharded transformer
    with torch.no_grad():
        assert _max_diff(model(x, t, text, mask, rope_scale=SCALE), expected) <= TOL


def test_bf16_close_to_diffusers_bf16(tiny_ltx_diffusers_dir):
    ref, directory = tiny_ltx_diffusers_dir
    model = load_ltx_transformer(directory, dtype=torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and model.blocks[0].modulation.dtype == torch.float32
    ref_bf16 = LTXVideoTransformer3DModel.from_pretrained(directory, torch_dtype=torch.bfloat16).eval()
    x, t, text, mask = _inputs()
    exact = _diffusers_out(ref, x, t, text, mask)
    with torch.no_grad():
        ours = model(x.bfloat16(), t, text.bfloat16(), mask, rope_scale=SCALE)
    theirs = _diffusers_out(ref_bf16, x.bfloat16(), t, text.bfloat16(), mask)
    assert ours.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    # kinema keeps the residual stream and the time path in float32: no less accurate than diffusers
    assert _max_diff(ours, exact) <= max(_max_diff(theirs, exact) * 1.5, 0.02 * scale)


# ------------------------------------------------------------------------------------------------
# The original single file
# ------------------------------------------------------------------------------------------------
def _write_single_file(ref: LTXVideoTransformer3DModel, path, metadata: bool = True) -> None:
    """Save the diffusers model's weights as an original LTX-Video single file: original keys under
    ``model.diffusion_model.``, a VAE key beside them, the original config in the metadata."""
    original = ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(ref.state_dict()))
    state = {"model.diffusion_model." + k: v for k, v in original.items()}
    state["vae.decoder.conv_in.conv.weight"] = torch.zeros(3)  # the single files hold the VAE too
    config = ltx_ckpt.to_original(ltx_ckpt.from_diffusers(dict(ref.config)))
    meta = {"config": json.dumps({"transformer": config, "vae": {}, "scheduler": {}})} if metadata else None
    save_safetensors(state, path, metadata=meta)


def test_original_single_file_matches_diffusers(tiny_ltx_diffusers_dir, tmp_path):
    ref, _ = tiny_ltx_diffusers_dir
    _write_single_file(ref, tmp_path / "ltx-video-tiny.safetensors")
    model = load_ltx_transformer(tmp_path / "ltx-video-tiny.safetensors")
    assert model.config == ltx_ckpt.from_diffusers(dict(ref.config))
    x, t, text, mask = _inputs()
    for timestep in (t, _i2v_timesteps(t)):
        with torch.no_grad():
            ours = model(x, timestep, text, mask, rope_scale=SCALE)
        assert _max_diff(ours, _diffusers_out(ref, x, timestep, text, mask)) <= TOL


def test_single_file_without_metadata(tiny_ltx_diffusers_dir, tmp_path):
    ref, _ = tiny_ltx_diffusers_dir
    path = tmp_path / "no_metadata.safetensors"
    _write_single_file(ref, path, metadata=False)
    with pytest.raises(CheckpointError, match="head count"):  # 20 wide: not the released 32 heads
        load_ltx_transformer(path)
    model = load_ltx_transformer(path, config=ltx_ckpt.from_diffusers(dict(ref.config)))
    x, t, text, mask = _inputs()
    with torch.no_grad():
        assert _max_diff(model(x, t, text, mask, rope_scale=SCALE), _diffusers_out(ref, x, t, text, mask)) <= TOL


def test_diffusers_keyed_single_file(tiny_ltx_diffusers_dir, tmp_path):
    ref, directory = tiny_ltx_diffusers_dir
    save_safetensors(ref.state_dict(), tmp_path / "transformer.safetensors")
    model = load_ltx_transformer(tmp_path / "transformer.safetensors", config=ltx_ckpt.from_diffusers(dict(ref.config)))
    x, t, text, mask = _inputs()
    with torch.no_grad():
        assert _max_diff(model(x, t, text, mask, rope_scale=SCALE), _diffusers_out(ref, x, t, text, mask)) <= TOL


# ------------------------------------------------------------------------------------------------
# Key maps and configs
# ------------------------------------------------------------------------------------------------
def test_key_maps_round_trip(tiny_ltx_diffusers_dir):
    ref, _ = tiny_ltx_diffusers_dir
    theirs = ref.state_dict()
    ours = DIFFUSERS_KEYS.to_ours(theirs)
    model = LTXTransformer(ltx_ckpt.from_diffusers(dict(ref.config)))
    assert set(ours) == set(model.state_dict())  # every diffusers key maps onto exactly our keys
    assert set(DIFFUSERS_KEYS.to_theirs(ours)) == set(theirs)  # and back
    assert ORIGINAL_KEYS.to_ours(ORIGINAL_KEYS.to_theirs(ours)).keys() == ours.keys()


def test_key_map_agrees_with_diffusers_converter(tiny_ltx_diffusers_dir):
    """Original-keyed, prefixed weights made by our maps, fed to diffusers' own single-file
    converter, give back diffusers' state dict exactly (same keys, same tensors)."""
    ref, _ = tiny_ltx_diffusers_dir
    theirs = ref.state_dict()
    original = ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(theirs))
    converted = convert_ltx_transformer_checkpoint_to_diffusers({"model.diffusion_model." + k: v for k, v in original.items()})
    assert set(converted) == set(theirs)
    assert all(converted[k] is theirs[k] for k in theirs)


def test_unknown_key_names_it():
    with pytest.raises(CheckpointError, match="transformer_blocks.0.attn1.to_qkv.weight"):
        DIFFUSERS_KEYS.to_ours({"transformer_blocks.0.attn1.to_qkv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="proj_in.weight"):
        ORIGINAL_KEYS.to_ours({"patchify_proj.weight": torch.zeros(1), "proj_in.weight": torch.zeros(1)})


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_or_extra_key_raises(change, tiny_ltx_diffusers_dir, tmp_path):
    ref, directory = tiny_ltx_diffusers_dir
    state = dict(ref.state_dict())
    if change == "missing":
        del state["transformer_blocks.1.attn2.norm_k.weight"]
        name = "blocks.1.cross_attn.norm_k.weight"
    else:
        state["transformer_blocks.2.ff.net.2.bias"] = torch.zeros(20)  # a third block the config does not have
        name = "blocks.2.ffn.2.bias"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    save_safetensors(state, broken / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_ltx_transformer(broken)


def test_diffusers_config_round_trip(tiny_ltx_diffusers_dir):
    _, directory = tiny_ltx_diffusers_dir
    saved = json.loads((directory / "config.json").read_text())
    ours = ltx_ckpt.from_diffusers(saved)
    assert {k: v for k, v in saved.items() if not k.startswith("_")} == {
        k: v for k, v in ltx_ckpt.to_diffusers(ours).items() if not k.startswith("_")
    }
    assert ltx_ckpt.from_original(ltx_ckpt.to_original(ours)) == ours
