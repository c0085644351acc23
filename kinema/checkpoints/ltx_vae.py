"""LTX-Video VAE checkpoints: key maps, the two config forms and the loader.

kinema's names are the original ones (Lightricks/LTX-Video ``CausalVideoAutoencoder``), so
:data:`ORIGINAL_KEYS` only renames the few places where kinema's modules differ: LayerNorms without
the original's ``.norm`` wrapper, timestep MLPs as ``nn.Sequential`` (``.0`` / ``.2``), and the
latent statistics. In an LTX-Video single file the VAE's keys carry :data:`ORIGINAL_PREFIX`, and
:data:`ORIGINAL_IGNORED_KEYS` are statistics nothing reads.

diffusers nests the flat block lists (``down_blocks.{i}`` / ``up_blocks.{i}``) into stages of
resnets, a downsampler or upsampler and a channel-changing resnet (``conv_out`` in the encoder,
``conv_in`` in the decoder); :func:`diffusers_keys` writes the indices out from the config's block
plan. The rename rules of diffusers' ``convert_ltx_vae_checkpoint_to_diffusers`` (single_file_utils)
are the composition of the two maps.

The config speaks diffusers' ``AutoencoderKLLTXVideo`` (:func:`from_diffusers`,
:func:`to_diffusers`); the original single files store a ``CausalVideoAutoencoder`` config in their
metadata (:func:`from_original`), whose flat block lists translate to diffusers' fields.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.vae.ltx_vae import (
    DOWN_BLOCK,
    DOWN_BLOCK_095,
    LTXVAE,
    BlockSpec,
    LTXVAEConfig,
    ltx_vae_preset,
)
from ..schema import Key, read, read_table
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
from .ltx import single_file_config

# ------------------------------------------------------------------------------------------------
# Key maps
# ------------------------------------------------------------------------------------------------
ORIGINAL_PREFIX = "vae."  # the VAE's keys in an LTX-Video single-file checkpoint
# statistics in the original checkpoints that neither the original code nor diffusers reads
ORIGINAL_IGNORED_KEYS = frozenset(
    {
        "per_channel_statistics.channel",
        "per_channel_statistics.mean-of-stds",
        "per_channel_statistics.mean-of-stds_over_std-of-means",
    }
)

# (kinema, original LTX-Video) with the prefix removed; kinema's names are the original's otherwise.
ORIGINAL_KEYS = KeyMap(
    "ltx-video-vae-original",
    [
        ("latents_mean", "per_channel_statistics.mean-of-means"),
        ("latents_std", "per_channel_statistics.std-of-means"),
        ("{path}.norm3.{leaf}", "{path}.norm3.norm.{leaf}"),
        ("{path}.time_embedder.0.{leaf}", "{path}.time_embedder.timestep_embedder.linear_1.{leaf}"),
        ("{path}.time_embedder.2.{leaf}", "{path}.time_embedder.timestep_embedder.linear_2.{leaf}"),
        ("decoder.last_time_embedder.0.{leaf}", "decoder.last_time_embedder.timestep_embedder.linear_1.{leaf}"),
        ("decoder.last_time_embedder.2.{leaf}", "decoder.last_time_embedder.timestep_embedder.linear_2.{leaf}"),
        ("encoder.{path}", "encoder.{path}"),
        ("decoder.{path}", "decoder.{path}"),
    ],
)


def _resnet(ours: str, theirs: str) -> list[tuple[str, str]]:
    """One residual block: diffusers wraps the 1x1x1 shortcut conv in a ``.conv``; the rest is the same."""
    return [
        (f"{ours}.conv_shortcut.{{leaf}}", f"{theirs}.conv_shortcut.conv.{{leaf}}"),
        (f"{ours}.{{path}}", f"{theirs}.{{path}}"),
    ]


def _time_embedder(ours: str, theirs: str) -> list[tuple[str, str]]:
    """A timestep MLP: ``Sequential`` indices <-> PixArt-alpha's ``timestep_embedder.linear_{1,2}``."""
    return [
        (f"{ours}.0.{{leaf}}", f"{theirs}.timestep_embedder.linear_1.{{leaf}}"),
        (f"{ours}.2.{{leaf}}", f"{theirs}.timestep_embedder.linear_2.{{leaf}}"),
    ]


def _block(ours: str, part: str, stages: str, spec: BlockSpec, roles: dict) -> list[tuple[str, str]]:
    """Rules for one block of the flat list at ``ours``, inside diffusers' stage ``spec.stage``."""
    from ..models.vae.ltx_vae import BlockKind

    stage = f"{part}.mid_block" if spec.stage < 0 else f"{part}.{stages}.{spec.stage}"
    if spec.kind is BlockKind.RES:
        return _resnet(f"{ours}.res_blocks.{{j}}", f"{stage}.resnets.{{j}}") + _time_embedder(
            f"{ours}.time_embedder", f"{stage}.time_embedder"
        )
    if spec.kind is BlockKind.RES_X_Y:
        return _resnet(ours, f"{stage}.{roles[spec.kind]}")
    return [(f"{ours}.{{path}}", f"{stage}.{roles[spec.kind]}.{{path}}")]  # a resampler: same names inside


def diffusers_keys(config: LTXVAEConfig) -> KeyMap:
    """Map to diffusers' ``AutoencoderKLLTXVideo`` state dict for ``config``."""
    from ..models.vae.ltx_vae import BlockKind

    rules = [
        ("latents_mean", "latents_mean"),
        ("latents_std", "latents_std"),
        ("encoder.conv_in.{path}", "encoder.conv_in.{path}"),
        ("encoder.conv_out.{path}", "encoder.conv_out.{path}"),
        ("decoder.conv_in.{path}", "decoder.conv_in.{path}"),
        ("decoder.conv_out.{path}", "decoder.conv_out.{path}"),
        ("decoder.timestep_scale_multiplier", "decoder.timestep_scale_multiplier"),
        ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
        *_time_embedder("decoder.last_time_embedder", "decoder.time_embedder"),
    ]
    encoder_roles = {
        BlockKind.RES_X_Y: "conv_out",
        BlockKind.DOWN_CONV: "downsamplers.0",
        BlockKind.DOWN_S2D: "downsamplers.0",
    }
    for i, spec in enumerate(config.encoder_plan()):
        rules += _block(f"encoder.down_blocks.{i}", "encoder", "down_blocks", spec, encoder_roles)
    decoder_roles = {BlockKind.RES_X_Y: "conv_in", BlockKind.UP: "upsamplers.0"}
    for i, spec in enumerate(config.decoder_plan()):
        rules += _block(f"decoder.up_blocks.{i}", "decoder", "up_blocks", spec, decoder_roles)
    return KeyMap("diffusers AutoencoderKLLTXVideo", rules)


# ------------------------------------------------------------------------------------------------
# diffusers' config.json
# ------------------------------------------------------------------------------------------------
CLASS_NAME = "AutoencoderKLLTXVideo"
ORIGINAL_CLASS = "CausalVideoAutoencoder"
# diffusers fields that follow from the architecture (spatial, temporal compression).
_DERIVED = ("spatial_compression_ratio", "temporal_compression_ratio")
_DIFFUSERS: dict[str, Key] = {
    **{f.name: read(f.default) for f in dataclasses.fields(LTXVAEConfig)},
    **{k: read(None) for k in _DERIVED},
}


def from_diffusers(config: Mapping[str, Any]) -> LTXVAEConfig:
    """From diffusers' ``AutoencoderKLLTXVideo`` config dict; unsupported values raise CheckpointError."""
    name = config.get("_class_name", CLASS_NAME) if isinstance(config, Mapping) else None
    if name != CLASS_NAME:
        raise CheckpointError(f"expected a diffusers {CLASS_NAME} config, got _class_name={name!r}")
    c = read_table(config, _DIFFUSERS, what=f"{CLASS_NAME} config", hint="not an LTX-Video VAE kinema supports")
    derived = {k: c.pop(k) for k in _DERIVED}
    try:
        out = LTXVAEConfig(**c)
    except (TypeError, ValueError, AttributeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"bad {CLASS_NAME} config: {' '.join(str(e).split())}") from None
    for key, expected in zip(_DERIVED, (out.spatial_compression, out.temporal_compression)):
        if derived[key] not in (None, expected):
            raise CheckpointError(f"{CLASS_NAME} {key}={derived[key]} does not match the architecture ({expected})")
    return out


def to_diffusers(config: LTXVAEConfig) -> dict[str, Any]:
    """diffusers' ``AutoencoderKLLTXVideo`` config dict (``config.json`` content)."""
    out: dict[str, Any] = {"_class_name": CLASS_NAME}
    out.update({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()})
    out.update(dict(zip(_DERIVED, (config.spatial_compression, config.temporal_compression))))
    return out


def is_config(raw: Any) -> bool:
    """Whether a config.json mapping names an LTX-Video VAE."""
    return isinstance(raw, Mapping) and raw.get("_class_name") == CLASS_NAME


# ------------------------------------------------------------------------------------------------
# The original config (an LTX-Video single file's metadata)
# ------------------------------------------------------------------------------------------------
# original config settings kinema (and diffusers) support, each with its only supported value
_ORIGINAL_SUPPORTED = {
    "dims": 3,
    "norm_layer": "pixel_norm",
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "normalize_latent_channels": False,
    "spatial_padding_mode": "zeros",
}
# original encoder downsamplers -> diffusers' downsample_type
_ORIGINAL_DOWNSAMPLERS = {
    "compress_all": "conv",
    "compress_space_res": "spatial",
    "compress_time_res": "temporal",
    "compress_all_res": "spatiotemporal",
}


def from_original(config: Mapping[str, Any]) -> LTXVAEConfig:
    """From an original ``CausalVideoAutoencoder`` config (the ``"vae"`` entry of the ``"config"``
    JSON in an LTX-Video single-file checkpoint's metadata). Keys the original ignores are ignored;
    layouts that diffusers' AutoencoderKLLTXVideo cannot express raise CheckpointError."""
    name = config.get("_class_name", ORIGINAL_CLASS)
    if name != ORIGINAL_CLASS:
        raise CheckpointError(f"expected an original LTX-Video {ORIGINAL_CLASS} config, got _class_name={name!r}")
    double_z = config.get("double_z", True)
    settings = {
        "dims": config.get("dims"),
        "norm_layer": config.get("norm_layer", "group_norm"),
        "latent_log_var": config.get("latent_log_var", "per_channel" if double_z else "none"),
        "use_quant_conv": config.get("use_quant_conv", True),
        "normalize_latent_channels": config.get("normalize_latent_channels", False),
        "spatial_padding_mode": config.get("spatial_padding_mode", "zeros"),
    }
    for key, value in settings.items():
        if value != _ORIGINAL_SUPPORTED[key] and not (key == "dims" and value == [3]):
            raise CheckpointError(
                f"original LTX-Video VAE {key}={value!r} is not supported (kinema, like diffusers, "
                f"needs {key}={_ORIGINAL_SUPPORTED[key]!r})"
            )
    encoder_blocks = config.get("encoder_blocks", config.get("blocks"))
    decoder_blocks = config.get("decoder_blocks", config.get("blocks"))
    if not encoder_blocks or not decoder_blocks:
        raise CheckpointError("original LTX-Video VAE config has no encoder_blocks/decoder_blocks (or blocks)")
    fields_ = _original_encoder(encoder_blocks, config.get("encoder_base_channels", 128))
    fields_.update(_original_decoder(decoder_blocks, config.get("decoder_base_channels", 128)))
    try:
        return LTXVAEConfig(
            in_channels=config.get("in_channels", 3),
            out_channels=config.get("out_channels", 3),
            latent_channels=config["latent_channels"],
            patch_size=config.get("patch_size", 1),
            timestep_conditioning=config.get("timestep_conditioning", False),
            decoder_causal=config.get("causal_decoder", False),
            scaling_factor=config.get("scaling_factor", 1.0),
            **fields_,
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"bad original LTX-Video VAE config: {' '.join(str(e).split())}") from None


def _block_params(params) -> dict:
    return {"num_layers": params} if isinstance(params, int) else dict(params)


def _original_encoder(blocks: list, base: int) -> dict:
    """diffusers' encoder fields from the original's block list ([name, params] pairs)."""
    stages: list[dict] = []  # res_x, then an optional downsampler, then an optional res_x_y
    ch = base
    for name, params in blocks:
        params = _block_params(params)
        if name == "res_x":
            stages.append({"layers": params["num_layers"], "in": ch, "down": None, "res_x_y": False})
        elif not stages or stages[-1]["res_x_y"] or (name in _ORIGINAL_DOWNSAMPLERS and stages[-1]["down"]):
            raise CheckpointError(f"original LTX-Video encoder block order not supported at {name!r}: {blocks}")
        elif name in _ORIGINAL_DOWNSAMPLERS:
            stages[-1]["down"] = _ORIGINAL_DOWNSAMPLERS[name]
            if name != "compress_all":
                ch *= params.get("multiplier", 2)
        elif name == "res_x_y":
            stages[-1]["res_x_y"] = True
            ch *= params.get("multiplier", 2)
        else:
            raise CheckpointError(f"original LTX-Video encoder block {name!r} is not supported")
        stages[-1]["out"] = ch
    mid = stages.pop() if stages else None
    if mid is None or mid["down"] or mid["res_x_y"]:
        raise CheckpointError(f"original LTX-Video encoder must end with a plain res_x block: {blocks}")
    s2d = any(s["down"] not in (None, "conv") for s in stages)
    out = {
        "layers_per_block": tuple(s["layers"] for s in stages) + (mid["layers"],),
        "spatio_temporal_scaling": tuple(s["down"] is not None for s in stages),
        "downsample_type": tuple(s["down"] or "conv" for s in stages),
    }
    if s2d:  # 0.9.5: widths at every stage boundary, no channel-changing resnets
        if any(s["res_x_y"] for s in stages):
            raise CheckpointError(f"original LTX-Video encoder mixes res_x_y with *_res downsamplers: {blocks}")
        out["block_out_channels"] = (base,) + tuple(s["out"] for s in stages)
        out["down_block_types"] = (DOWN_BLOCK_095,) * len(stages)
    else:  # 0.9.0: the width at the start of each stage; the last stage keeps its width
        out["block_out_channels"] = tuple(s["in"] for s in stages)
        out["down_block_types"] = (DOWN_BLOCK,) * len(stages)
    return out


def _original_decoder(blocks: list, base: int) -> dict:
    """diffusers' decoder fields from the original's block list (which runs from the output side)."""
    ch = base
    for name, params in blocks:  # the decoder's input width: base times every width multiplier
        params = _block_params(params)
        if name == "res_x_y":
            ch *= params.get("multiplier", 2)
        elif name == "compress_all":
            ch *= params.get("multiplier", 1)
    rev = [(name, _block_params(params)) for name, params in reversed(blocks)]
    if not rev or rev[0][0] != "res_x":
        raise CheckpointError(f"original LTX-Video decoder must start (from the latent side) with res_x: {blocks}")
    layers, noise = [rev[0][1]["num_layers"]], [rev[0][1].get("inject_noise", False)]
    widths, scaling, residual, factors = [], [], [], []
    group: dict = {}
    for name, params in rev[1:]:
        if name == "res_x_y" and not group:
            group["res_x_y"] = params
            ch //= params.get("multiplier", 2)
        elif name == "compress_all" and "up" not in group:
            group["up"] = params
        elif name == "res_x":
            up = group.get("up")
            f = up.get("multiplier", 1) if up else 1
            if up:
                ch //= f
            if "res_x_y" in group and group["res_x_y"].get("inject_noise", False) != params.get("inject_noise", False):
                raise CheckpointError(f"original LTX-Video decoder res_x_y and res_x disagree on inject_noise: {blocks}")
            widths.append(ch * f)
            scaling.append(up is not None)
            residual.append(bool(up.get("residual", False)) if up else False)
            factors.append(f)
            layers.append(params["num_layers"])
            noise.append(params.get("inject_noise", False))
            group = {}
        else:
            raise CheckpointError(f"original LTX-Video decoder block {name!r} not supported here: {blocks}")
    if group:
        raise CheckpointError(f"original LTX-Video decoder must end (on the pixel side) with res_x: {blocks}")
    return {
        "decoder_block_out_channels": tuple(widths[::-1]),
        "decoder_layers_per_block": tuple(layers[::-1]),
        "decoder_spatio_temporal_scaling": tuple(scaling[::-1]),
        "decoder_inject_noise": tuple(noise[::-1]),
        "upsample_residual": tuple(residual[::-1]),
        "upsample_factor": tuple(factors[::-1]),
    }


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
WEIGHTS_STEM = "diffusion_pytorch_model"


def _infer_preset(state: Mapping[str, torch.Tensor], timestep_key: str) -> LTXVAEConfig:
    """The released VAE whose layout the tensors have (diffusers' own single-file detection)."""
    conv_out = state.get("encoder.conv_out.conv.weight")
    if conv_out is not None and conv_out.shape[1] == ltx_vae_preset("ltx-video-0.9.5").block_out_channels[-1]:
        return ltx_vae_preset("ltx-video-0.9.5")
    return ltx_vae_preset("ltx-video-0.9.1" if timestep_key in state else "ltx-video-0.9.0")


def stored_config(path: str | os.PathLike) -> LTXVAEConfig | None:
    """The VAE config a diffusers directory or an original single file stores, or None."""
    path = Path(path)
    if path.is_dir():
        return from_diffusers(read_json(path / "config.json"))
    stored = single_file_config(path).get("vae")
    return from_original(stored) if stored else None


def load_ltx_vae(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: LTXVAEConfig | None = None,
) -> LTXVAE:
    """Load an LTX-Video VAE from a diffusers ``vae/`` directory or an original single file.

    Args:
        path: a diffusers directory (``config.json`` with ``_class_name`` AutoencoderKLLTXVideo and
            ``diffusion_pytorch_model.safetensors``; a model root with a ``vae/`` folder also works),
            or one ``.safetensors`` file: an original LTX-Video checkpoint (the VAE's keys are those
            prefixed ``vae.``; the rest, the transformer, is skipped) or a VAE alone in the original or
            diffusers layout.
        dtype: cast the weights to this dtype (None keeps the stored dtype); the latent statistics
            stay float32.
        device: put the weights here (None: CPU).
        config: the architecture of a single file that stores none. Default: the release the keys
            show (0.9.0, 0.9.1 or 0.9.5). A directory's ``config.json`` (or a file's metadata) is the
            source of truth: a different ``config`` raises.
    Returns:
        the :class:`LTXVAE` in eval mode, without gradients.
    """
    path = Path(path)
    path = component_dir(path, "vae")
    if not path.exists():
        raise CheckpointError(f"LTX-Video VAE checkpoint not found: {path}")
    stored = stored_config(path)  # before the weights: a config kinema cannot run fails fast
    if path.is_dir():
        state = load_sharded_safetensors(path, WEIGHTS_STEM)
        diffusers_layout = True
    else:
        state = load_weights(path)
        if any(k.startswith(ORIGINAL_PREFIX) for k in state):  # a whole LTX-Video checkpoint: take the VAE
            state = {k[len(ORIGINAL_PREFIX) :]: v for k, v in state.items() if k.startswith(ORIGINAL_PREFIX)}
        diffusers_layout = any(k.startswith("decoder.mid_block.") for k in state)
    timestep_key = ("decoder.time_embedder.timestep_embedder.linear_1.weight" if diffusers_layout
                    else "decoder.last_time_embedder.timestep_embedder.linear_1.weight")  # fmt: skip
    where = path / "config.json" if path.is_dir() else f"{path}'s metadata config"
    config = resolve_config(stored, config, lambda: _infer_preset(state, timestep_key), where=where, what="LTX-Video VAE")
    if diffusers_layout:
        state = diffusers_keys(config).to_ours(state)
    else:
        state = ORIGINAL_KEYS.to_ours({k: v for k, v in state.items() if k not in ORIGINAL_IGNORED_KEYS})
    model = build_on_meta(lambda: LTXVAE(config))
    load_into(model, state, dtype=dtype, device=device, what="LTX-Video VAE")
    return model.eval().requires_grad_(False)


def codec_config(path: str | os.PathLike) -> LTXVAEConfig:
    """The VAE's config, reading config files and metadata only (a single file without one: 0.9.0's
    layout, whose compressions, 8 x 32 x 32, every release shares)."""
    path = Path(path)
    path = component_dir(path, "vae")
    return stored_config(path) or LTXVAEConfig()


load_codec = load_ltx_vae
