"""Wan 2.1 VAE checkpoints: key maps, diffusers' config and the loader.

kinema's parameter names are the original ones (``Wan2.1_VAE.pth``), so :func:`original_keys` is an
identity map over the four top-level parts. diffusers renames most modules and nests the
decoder's flat ``upsamples.{i}`` list as ``up_blocks.{stage}.resnets.{r}`` / ``upsamplers.0``;
:func:`diffusers_keys` writes out those indices from the config.

Every tensor has the same shape in both formats (RMS norm gammas are (C, 1, 1, 1), or (C, 1, 1) in
the attention blocks, on both sides), so a map renames and never reshapes.

The config speaks diffusers' ``AutoencoderKLWan`` (:func:`from_diffusers` / :func:`to_diffusers`);
the original release stores none: a weights file alone is Wan 2.1's structure at the width its
tensors have.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.vae.wan_vae import WanVAE, WanVAEConfig
from ..schema import Key, must, read, read_table
from .io import (
    build_on_meta,
    component_dir,
    load_into,
    load_sharded_safetensors,
    load_weights,
    read_json,
    resolve_config,
)
from .keymap import KeyMap


# ------------------------------------------------------------------------------------------------
# Key maps
# ------------------------------------------------------------------------------------------------
def original_keys(config: WanVAEConfig) -> KeyMap:
    """Identity map to the original Wan layout (``Wan2.1_VAE.pth``); keys outside it raise."""
    del config  # the original names are kinema's for every config
    return KeyMap(
        "wan-vae-original",
        [
            ("encoder.{path}.{leaf}", "encoder.{path}.{leaf}"),
            ("decoder.{path}.{leaf}", "decoder.{path}.{leaf}"),
            ("conv1.{leaf}", "conv1.{leaf}"),
            ("conv2.{leaf}", "conv2.{leaf}"),
        ],
    )


def _residual(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One residual block: ``residual.{0,2,3,6}`` / ``shortcut`` <-> ``norm1 conv1 norm2 conv2 conv_shortcut``."""
    return [
        (f"{ours}.residual.0.gamma", f"{theirs}.norm1.gamma"),
        (f"{ours}.residual.2.{{leaf}}", f"{theirs}.conv1.{{leaf}}"),
        (f"{ours}.residual.3.gamma", f"{theirs}.norm2.gamma"),
        (f"{ours}.residual.6.{{leaf}}", f"{theirs}.conv2.{{leaf}}"),
        (f"{ours}.shortcut.{{leaf}}", f"{theirs}.conv_shortcut.{{leaf}}"),
    ]


def _resample(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One resampler: the per-frame conv ``resample.1`` and the temporal ``time_conv``."""
    return [
        (f"{ours}.resample.1.{{leaf}}", f"{theirs}.resample.1.{{leaf}}"),
        (f"{ours}.time_conv.{{leaf}}", f"{theirs}.time_conv.{{leaf}}"),
    ]


def _middle_and_ends(part: str) -> list[tuple[str, str]]:
    """``conv1``, ``middle.{0,1,2}`` and ``head.{0,2}`` of the encoder or decoder."""
    return [
        (f"{part}.conv1.{{leaf}}", f"{part}.conv_in.{{leaf}}"),
        *_residual(f"{part}.middle.0", f"{part}.mid_block.resnets.0"),
        (f"{part}.middle.1.{{path}}", f"{part}.mid_block.attentions.0.{{path}}"),
        *_residual(f"{part}.middle.2", f"{part}.mid_block.resnets.1"),
        (f"{part}.head.0.gamma", f"{part}.norm_out.gamma"),
        (f"{part}.head.2.{{leaf}}", f"{part}.conv_out.{{leaf}}"),
    ]


def diffusers_keys(config: WanVAEConfig) -> KeyMap:
    """Map to diffusers' ``AutoencoderKLWan`` state dict for ``config``."""
    rules = [("conv1.{leaf}", "quant_conv.{leaf}"), ("conv2.{leaf}", "post_quant_conv.{leaf}")]

    # encoder: both sides are one flat list of residual blocks and resamplers
    rules += _middle_and_ends("encoder")
    rules += _residual("encoder.downsamples.{i}", "encoder.down_blocks.{i}")
    rules += _resample("encoder.downsamples.{i}", "encoder.down_blocks.{i}")

    # decoder: a flat list in the original, nested per stage in diffusers
    rules += _middle_and_ends("decoder")
    flat = 0
    n_stages = len(config.dim_mult)
    for stage in range(n_stages):
        for r in range(config.num_res_blocks + 1):
            rules += _residual(f"decoder.upsamples.{flat}", f"decoder.up_blocks.{stage}.resnets.{r}")
            flat += 1
        if stage < n_stages - 1:
            rules += _resample(f"decoder.upsamples.{flat}", f"decoder.up_blocks.{stage}.upsamplers.0")
            flat += 1
    return KeyMap("diffusers AutoencoderKLWan", rules)


# ------------------------------------------------------------------------------------------------
# diffusers' config.json
# ------------------------------------------------------------------------------------------------
CLASS_NAME = "AutoencoderKLWan"  # config.json's _class_name (diffusers')
_DEFAULTS = WanVAEConfig()
# diffusers' AutoencoderKLWan fields: ours under another name (diffusers keeps the original's
# "temperal" spelling), the Wan 2.2 variants with the only value Wan 2.1 uses, and the
# compressions, which follow from the architecture (checked against it).
_DIFFUSERS: dict[str, Key] = {
    "base_dim": read(_DEFAULTS.base_dim),
    "z_dim": read(_DEFAULTS.z_dim),
    "dim_mult": read(_DEFAULTS.dim_mult),
    "num_res_blocks": read(_DEFAULTS.num_res_blocks),
    "attn_scales": read(_DEFAULTS.attn_scales),
    "temperal_downsample": read(_DEFAULTS.temporal_downsample, name="temporal_downsample"),
    "dropout": read(_DEFAULTS.dropout),
    "latents_mean": read(_DEFAULTS.latents_mean),
    "latents_std": read(_DEFAULTS.latents_std),
    "in_channels": read(_DEFAULTS.in_channels),
    "out_channels": read(_DEFAULTS.out_channels),
    "decoder_base_dim": read(None),  # Wan 2.2: another decoder width; Wan 2.1: None (or base_dim)
    "is_residual": must(False),  # Wan 2.2
    "patch_size": must(None),  # Wan 2.2
    "scale_factor_temporal": read(None),
    "scale_factor_spatial": read(None),
}
_DERIVED = ("scale_factor_temporal", "scale_factor_spatial")


def from_diffusers(config: Mapping[str, Any]) -> WanVAEConfig:
    """From diffusers' ``AutoencoderKLWan`` config dict; unsupported values raise CheckpointError."""
    name = config.get("_class_name", CLASS_NAME) if isinstance(config, Mapping) else None
    if name != CLASS_NAME:
        raise CheckpointError(f"expected a diffusers {CLASS_NAME} config, got _class_name={name!r}")
    c = read_table(config, _DIFFUSERS, what=f"{CLASS_NAME} config", hint="not a Wan 2.1 VAE kinema supports (a Wan 2.2 VAE?)")
    decoder_base_dim = c.pop("decoder_base_dim")
    if decoder_base_dim not in (None, c["base_dim"]):
        raise CheckpointError(f"{CLASS_NAME} decoder_base_dim={decoder_base_dim!r} is not supported (a Wan 2.2 VAE?); kinema's Wan VAE needs None")
    derived = {k: c.pop(k) for k in _DERIVED}
    try:
        out = WanVAEConfig(**c)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad {CLASS_NAME} config: {' '.join(str(e).split())}") from None
    for key, expected in zip(_DERIVED, (out.temporal_compression, out.spatial_compression)):
        if derived[key] not in (None, expected):
            raise CheckpointError(f"{CLASS_NAME} {key}={derived[key]} does not match the architecture ({expected})")
    return out


def to_diffusers(config: WanVAEConfig) -> dict[str, Any]:
    """diffusers' ``AutoencoderKLWan`` config dict (``config.json`` content)."""
    ours = dataclasses.asdict(config)
    out: dict[str, Any] = {"_class_name": CLASS_NAME}
    for theirs, row in _DIFFUSERS.items():
        if row.read and theirs not in _DERIVED and theirs != "decoder_base_dim":
            value = ours[row.name or theirs]
            out[theirs] = list(value) if isinstance(value, tuple) else value
    out.update({"decoder_base_dim": None, "is_residual": False, "patch_size": None})
    out.update(dict(zip(_DERIVED, (config.temporal_compression, config.spatial_compression))))
    return out


def is_config(raw: Any) -> bool:
    """Whether a config.json mapping names a Wan VAE."""
    return isinstance(raw, Mapping) and raw.get("_class_name") == CLASS_NAME


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
WEIGHTS_STEM = "diffusion_pytorch_model"


def load_wan_vae(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: WanVAEConfig | None = None,
) -> WanVAE:
    """Load a Wan 2.1 VAE from a diffusers ``vae/`` directory or an original weights file.

    Args:
        path: a diffusers directory (``config.json`` with ``_class_name`` AutoencoderKLWan and
            ``diffusion_pytorch_model.safetensors``; a model root with a ``vae/`` folder also
            works), or one weights file: ``Wan2.1_VAE.pth`` (loaded with ``weights_only=True``)
            or a ``.safetensors`` with original (or diffusers) keys, with a diffusers config.json
            beside it when there is one.
        dtype: cast the weights to this dtype (None keeps the stored dtype).
        device: put the weights here (None: CPU).
        config: the architecture of a single weights file with no config.json (default: the
            released Wan 2.1 VAE's structure, with the base width read off the first convolution).
            A stored config.json is the source of truth; a different ``config`` raises.
    Returns:
        the :class:`WanVAE` in eval mode, without gradients.
    """
    path = Path(path)
    if path.is_dir():
        path = component_dir(path, "vae")
        where = path / "config.json"
        stored = from_diffusers(read_json(where))
        state = load_sharded_safetensors(path, WEIGHTS_STEM)
    elif path.is_file():
        where = path.parent / "config.json"
        sibling = read_json(where) if where.is_file() else None
        stored = from_diffusers(sibling) if is_config(sibling) else None
        state = load_weights(path)
    else:
        raise CheckpointError(f"Wan VAE checkpoint not found: {path}")
    is_diffusers = any(k.startswith("encoder.conv_in.") for k in state)

    def infer() -> WanVAEConfig:  # Wan 2.1's structure, at the width the tensors have
        first_conv = state.get("encoder.conv_in.weight" if is_diffusers else "encoder.conv1.weight")
        return WanVAEConfig(base_dim=first_conv.shape[0]) if first_conv is not None else WanVAEConfig()

    config = resolve_config(stored, config, infer, where=where, what="Wan VAE")
    keymap = diffusers_keys(config) if is_diffusers else original_keys(config)
    model = build_on_meta(lambda: WanVAE(config))
    load_into(model, keymap.to_ours(state), dtype=dtype, device=device, what="Wan VAE")
    return model.eval().requires_grad_(False)


def codec_config(path: str | os.PathLike) -> WanVAEConfig:
    """The VAE's config, reading config files only: a directory's config.json (or its ``vae/``
    folder's), a weights file's config.json beside it, else Wan 2.1's structure."""
    path = Path(path)
    if path.is_dir():
        path = component_dir(path, "vae")
        return from_diffusers(read_json(path / "config.json"))
    sibling = path.parent / "config.json"
    raw = read_json(sibling) if sibling.is_file() else None
    return from_diffusers(raw) if is_config(raw) else WanVAEConfig()


load_codec = load_wan_vae
