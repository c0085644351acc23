"""kinema's Wan 2.1 transformer against diffusers' WanTransformer3DModel, through the real loaders.

A tiny random diffusers model is saved with ``save_pretrained`` and loaded by
``load_wan_transformer``; the same weights are also written in the original Wan layout. Outputs
must agree to float32 rounding, and the key maps must agree with diffusers' own converter.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from kinema.checkpoints import wan as wan_ckpt
from kinema.checkpoints.io import save_safetensors
from kinema.checkpoints.wan import load_wan_transformer
from kinema.checkpoints.wan import DIFFUSERS_KEYS, ORIGINAL_KEYS
from kinema.errors import CheckpointError
from kinema.models.wan import WanTransformer

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers  # noqa: E402

TOL = 1e-4
TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=256,
    ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip
TINY_T2V = dict(TINY, in_channels=16, out_channels=16)
TINY_I2V = dict(TINY, in_channels=8, out_channels=4, image_dim=1280, added_kv_proj_dim=24)
TEXT_LEN = 512  # diffusers hard-codes 512 text tokens (its i2v split relies on it)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter (norm weights around 1), so a swapped key shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") else noise)


def _save_diffusers(config: dict, directory, seed: int) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config)
    _randomize(model, seed)
    model.save_pretrained(directory)  # config.json + diffusion_pytorch_model.safetensors
    return model.eval()


@pytest.fixture(scope="module")
def tiny_wan_t2v_diffusers_dir(tmp_path_factory):
    """(diffusers model, its save_pretrained directory) for a tiny random t2v transformer."""
    directory = tmp_path_factory.mktemp("wan_t2v") / "transformer"
    return _save_diffusers(TINY_T2V, directory, seed=0), directory


@pytest.fixture(scope="module")
def tiny_wan_i2v_diffusers_dir(tmp_path_factory):
    """(diffusers model, its save_pretrained directory) for a tiny random i2v transformer."""
    directory = tmp_path_factory.mktemp("wan_i2v") / "transformer"
    return _save_diffusers(TINY_I2V, directory, seed=1), directory


def _inputs(in_channels: int, batch: int = 1, image: bool = False, seed: int = 0):
    """Latents (B, C, 3, 6, 8), timesteps, 7 text tokens, and the same zero-padded to 512 tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, 3, 6, 8, generator=g)
    t = torch.tensor([937.5, 12.25][:batch])
    text = torch.randn(batch, 7, 32, generator=g)
    padded = torch.cat([text, text.new_zeros(batch, TEXT_LEN - 7, 32)], dim=1)
    clip = torch.randn(batch, 257, 1280, generator=g) if image else None
    return x, t, text, padded, clip


def _diffusers_out(model, x, t, padded, clip):
    with torch.no_grad():
        return model(x, t, padded, encoder_hidden_states_image=clip, return_dict=False)[0]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------
# Forward parity through the diffusers-layout loader
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_t2v_matches_diffusers(tiny_wan_t2v_diffusers_dir, batch):
    ref, directory = tiny_wan_t2v_diffusers_dir
    model = load_wan_transformer(directory)
    x, t, text, padded, _ = _inputs(16, batch)
    with torch.no_grad():
        ours = model(x, t, text)  # unpadded text: kinema pads to 512 as the original does
    theirs = _diffusers_out(ref, x, t, padded, None)
    assert ours.shape == theirs.shape == (batch, 16, 3, 6, 8)
    assert _max_diff(ours, theirs) <= TOL


@pytest.mark.parametrize("batch", [1, 2])
def test_i2v_matches_diffusers(tiny_wan_i2v_diffusers_dir, batch):
    ref, directory = tiny_wan_i2v_diffusers_dir
    model = load_wan_transformer(directory)
    assert model.config.image_dim == 1280 and model.config.in_dim == 8 and model.config.out_dim == 4
    x, t, text, padded, clip = _inputs(8, batch, image=True)
    with torch.no_grad():
        ours = model(x, t, text, clip)
    theirs = _diffusers_out(ref, x, t, padded, clip)
    assert ours.shape == theirs.shape == (batch, 4, 3, 6, 8)
    assert _max_diff(ours, theirs) <= TOL


@pytest.mark.parametrize("batch", [1, 2])
def test_time_per_frame_matches_diffusers_time_per_token(tiny_wan_t2v_diffusers_dir, batch):
    """A time per latent frame (a given past clean, the rest noisy) equals diffusers' time per token
    (Wan 2.2's path in WanTransformer3DModel) with each frame's time on all of its tokens."""
    ref, directory = tiny_wan_t2v_diffusers_dir
    model = load_wan_transformer(directory)
    x, _, text, padded, _ = _inputs(16, batch)
    per_frame = torch.tensor([[0.0, 20.0, 937.5], [50.0, 500.0, 12.25]][:batch])  # (B, F')
    with torch.no_grad():
        ours = model(x, per_frame, text)
    per_token = per_frame.repeat_interleave((6 // 2) * (8 // 2), dim=1)  # (B, S): patch (1, 2, 2)
    theirs = _diffusers_out(ref, x, per_token, padded, None)
    assert _max_diff(ours, theirs) <= TOL
    with torch.no_grad():  # all frames at one time: the same as the scalar time
        same = model(x, per_frame[:, 2:].expand(-1, 3), text)
        scalar = model(x, per_frame[:, 2], text)
    assert _max_diff(same, scalar) <= 1e-5
    with pytest.raises(ValueError, match="a time per frame"):
        model(x, per_frame[:, :2], text)


def test_batch_rows_are_independent(tiny_wan_t2v_diffusers_dir):
    _, directory = tiny_wan_t2v_diffusers_dir
    model = load_wan_transformer(directory)
    x, t, text, _, _ = _inputs(16, batch=2)
    with torch.no_grad():
        both = model(x, t, text)
        second = model(x[1:], t[1:], text[1:])
    assert _max_diff(both[1:], second) <= 1e-5
    assert _max_diff(both[0], both[1]) > 1e-2  # different timesteps and inputs give different outputs


def test_bf16_close_to_diffusers_bf16(tiny_wan_i2v_diffusers_dir):
    ref, directory = tiny_wan_i2v_diffusers_dir
    model = load_wan_transformer(directory, dtype=torch.bfloat16)
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert model.blocks[0].modulation.dtype == torch.float32 and model.time_projection[1].weight.dtype == torch.float32
    ref_bf16 = WanTransformer3DModel.from_pretrained(directory, torch_dtype=torch.bfloat16).eval()
    x, t, text, padded, clip = _inputs(8, 2, image=True)
    exact = _diffusers_out(ref, x, t, padded, clip)
    with torch.no_grad():
        ours = model(x.bfloat16(), t, text.bfloat16(), clip.bfloat16())
    theirs = _diffusers_out(ref_bf16, x.bfloat16(), t, padded.bfloat16(), clip.bfloat16())
    assert ours.dtype == torch.bfloat16
    scale = exact.abs().max().item()
    # kinema keeps the residual stream and time projection in float32: no less accurate than diffusers
    assert _max_diff(ours, exact) <= max(_max_diff(theirs, exact) * 1.5, 0.02 * scale)
    assert _max_diff(ours, theirs) <= 0.05 * scale


# ------------------------------------------------------------------------------------------------
# The original Wan layout
# ------------------------------------------------------------------------------------------------
def _write_original(ref: WanTransformer3DModel, directory, prefix: str = "") -> None:
    """Save the diffusers model's weights with original Wan keys plus an original config.json."""
    original = ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(ref.state_dict()))
    directory.mkdir(parents=True)
    save_safetensors({prefix + k: v for k, v in original.items()}, directory / "diffusion_pytorch_model.safetensors")
    config = wan_ckpt.to_original(replace(wan_ckpt.from_diffusers(dict(ref.config)), rope_max_seq_len=1024))
    for omitted in ("patch_size", "window_size", "qk_norm", "cross_attn_norm"):
        config.pop(omitted)  # real original config.json files omit these (WanModel.ignore_for_config)
    # (text_dim is omitted too in real files, where it is the default 4096; the tiny model needs 32)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_original_layout_matches_diffusers(kind, tiny_wan_t2v_diffusers_dir, tiny_wan_i2v_diffusers_dir, tmp_path):
    ref, _ = tiny_wan_t2v_diffusers_dir if kind == "t2v" else tiny_wan_i2v_diffusers_dir
    directory = tmp_path / "original"
    _write_original(ref, directory)
    model = load_wan_transformer(directory)
    assert model.config.image_dim == (None if kind == "t2v" else 1280)
    x, t, text, padded, clip = _inputs(ref.config.in_channels, 2, image=kind == "i2v")
    with torch.no_grad():
        ours = model(x, t, text, clip)
    assert _max_diff(ours, _diffusers_out(ref, x, t, padded, clip)) <= TOL


def test_prefixed_single_file_loads(tiny_wan_t2v_diffusers_dir, tmp_path):
    ref, _ = tiny_wan_t2v_diffusers_dir
    directory = tmp_path / "single"
    _write_original(ref, directory, prefix="model.diffusion_model.")
    model = load_wan_transformer(directory / "diffusion_pytorch_model.safetensors")
    x, t, text, padded, _ = _inputs(16)
    with torch.no_grad():
        ours = model(x, t, text)
    assert _max_diff(ours, _diffusers_out(ref, x, t, padded, None)) <= TOL


# ------------------------------------------------------------------------------------------------
# Key maps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_key_maps_cover_both_formats(kind, tiny_wan_t2v_diffusers_dir, tiny_wan_i2v_diffusers_dir):
    ref, _ = tiny_wan_t2v_diffusers_dir if kind == "t2v" else tiny_wan_i2v_diffusers_dir
    theirs = ref.state_dict()
    ours = DIFFUSERS_KEYS.to_ours(theirs)
    model = WanTransformer(wan_ckpt.from_diffusers(dict(ref.config)))
    assert set(ours) == set(model.state_dict())  # every diffusers key maps onto exactly our keys
    assert set(DIFFUSERS_KEYS.to_theirs(ours)) == set(theirs)  # and back
    assert set(ORIGINAL_KEYS.to_ours(ORIGINAL_KEYS.to_theirs(ours))) == set(ours)
    assert ORIGINAL_KEYS.to_theirs(ours).keys() == ours.keys()  # kinema names are the original names


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_key_map_agrees_with_diffusers_converter(kind, tiny_wan_t2v_diffusers_dir, tiny_wan_i2v_diffusers_dir):
    """Original-keyed weights made by our maps, fed to diffusers' own original->diffusers converter,
    give back diffusers' state dict exactly (same keys, same tensors)."""
    ref, _ = tiny_wan_t2v_diffusers_dir if kind == "t2v" else tiny_wan_i2v_diffusers_dir
    theirs = ref.state_dict()
    original = ORIGINAL_KEYS.to_theirs(DIFFUSERS_KEYS.to_ours(theirs))
    converted = convert_wan_transformer_to_diffusers(dict(original))
    assert set(converted) == set(theirs)
    assert all(converted[k] is theirs[k] for k in theirs)


def test_unknown_key_names_it():
    with pytest.raises(CheckpointError, match="blocks.0.attn1.to_qkv.weight"):
        DIFFUSERS_KEYS.to_ours({"blocks.0.attn1.to_qkv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="blocks.0.attn1.to_q.weight"):
        ORIGINAL_KEYS.to_ours({"blocks.0.attn1.to_q.weight": torch.zeros(1)})


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_missing_or_extra_key_raises(change, tiny_wan_t2v_diffusers_dir, tmp_path):
    ref, directory = tiny_wan_t2v_diffusers_dir
    state = dict(ref.state_dict())
    if change == "missing":
        del state["blocks.1.attn2.norm_k.weight"]
        name = "blocks.1.cross_attn.norm_k.weight"
    else:
        state["blocks.2.ffn.net.2.bias"] = torch.zeros(24)  # a third block the config does not have
        name = "blocks.2.ffn.2.bias"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    save_safetensors(state, broken / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_wan_transformer(broken)


def test_ignored_diffusers_key_is_dropped(tiny_wan_i2v_diffusers_dir, tmp_path):
    """Older diffusers i2v checkpoints carry an unused attn2.norm_added_q; diffusers ignores it, so do we."""
    ref, directory = tiny_wan_i2v_diffusers_dir
    state = dict(ref.state_dict())
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(24)
    out = tmp_path / "with_norm_added_q"
    out.mkdir()
    (out / "config.json").write_text((directory / "config.json").read_text())
    save_safetensors(state, out / "diffusion_pytorch_model.safetensors")
    assert load_wan_transformer(out).config.image_dim == 1280


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [TINY_T2V, TINY_I2V])
def test_diffusers_config_round_trip(config, tiny_wan_t2v_diffusers_dir, tiny_wan_i2v_diffusers_dir):
    ref, directory = tiny_wan_t2v_diffusers_dir if config is TINY_T2V else tiny_wan_i2v_diffusers_dir
    saved = json.loads((directory / "config.json").read_text())
    ours = wan_ckpt.from_diffusers(saved)
    back = wan_ckpt.to_diffusers(ours)
    assert {k: v for k, v in saved.items() if not k.startswith("_")} == {k: v for k, v in back.items() if not k.startswith("_")}
    as_original = replace(ours, rope_max_seq_len=1024)  # the original format has no such field (fixed 1024)
    assert wan_ckpt.from_original(wan_ckpt.to_original(as_original)) == as_original
    with pytest.raises(CheckpointError, match="rope_max_seq_len"):
        wan_ckpt.to_original(ours)


def test_unsupported_diffusers_configs_raise(tiny_wan_t2v_diffusers_dir):
    _, directory = tiny_wan_t2v_diffusers_dir
    saved = json.loads((directory / "config.json").read_text())
    with pytest.raises(CheckpointError, match="pos_embed_seq_len"):
        wan_ckpt.from_diffusers({**saved, "pos_embed_seq_len": 514})
    with pytest.raises(CheckpointError, match="window_size"):
        wan_ckpt.from_diffusers({**saved, "window_size": [-1, -1]})  # not a diffusers field
    with pytest.raises(CheckpointError, match="added_kv_proj_dim"):
        wan_ckpt.from_diffusers({**saved, "image_dim": 1280, "added_kv_proj_dim": 48})
    with pytest.raises(CheckpointError, match="qk_norm"):
        wan_ckpt.from_diffusers({**saved, "qk_norm": None})
    with pytest.raises(CheckpointError, match="_class_name"):
        wan_ckpt.from_diffusers({**saved, "_class_name": "LTXVideoTransformer3DModel"})
