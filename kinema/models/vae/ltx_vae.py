"""The LTX-Video video autoencoder: 128 latent channels, 32 x 32 x 8 compression, pixel (RMS) norms.

Architecture and parameter names are those of the original release (Lightricks/LTX-Video,
``ltx_video/models/autoencoders/causal_video_autoencoder.py``, ``CausalVideoAutoencoder``): the
encoder and the decoder are flat lists of blocks (``down_blocks.{i}``, ``up_blocks.{i}``), so the
original single-file checkpoints load with a near-identity key map
(:data:`kinema.checkpoints.ltx_vae_keys.ORIGINAL_KEYS`); diffusers' ``AutoencoderKLLTXVideo``
layout loads through :func:`kinema.checkpoints.ltx_vae_keys.diffusers_keys`. The config speaks
diffusers' ``config.json`` (:class:`LTXVAEConfig`), and numerics follow diffusers.

Versions (:data:`LTX_VAE_PRESETS`): 0.9.0 (diffusers' default config); 0.9.1, whose decoder is
conditioned on a *decode timestep* (the noise level of the latents it is given, with noise blended
into them at ``decode_noise_scale``), injects spatial noise and doubles resolution with residual
depth-to-space upsamplers; 0.9.5 (also 0.9.7 / 0.9.8), whose encoder downsamples by space-to-depth.

Long clips: bounded memory with exact results
---------------------------------------------
The encoder is causal, so it runs chunk by chunk with a :class:`~kinema.models.vae.causal.CausalCache`
like Wan's. The decoder's convolutions are *centred* in time (output frame t sees frames t-1, t, t+1;
the clip's ends repeat their edge frame), so a pixel depends on ~30 latent frames on each side in
0.9.1 (17 from the mid block alone): decoding overlapping windows exactly would need windows wider
than most clips, and diffusers' overlap-and-blend tiling changes the result. kinema instead streams
the decoder: every convolution keeps the last two frames of its input in the cache and emits an
output frame once the frame after it has arrived (it runs one frame behind its input); residual
paths hold their frames until the delayed branch catches up; and when the input ends, the end of the
stream is announced to the layers in order, a few at a time, so that no step pushes more than
``chunk_size`` latent frames' worth of frames through any layer. Every frame is computed once, the
output is the one-pass decode's (up to float summation order), and activation memory is set by
``chunk_size``, not by the length of the clip.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from ...errors import CheckpointError, KinemaError
from ...runtime import cap_heap_growth
from ..layers import mlp, randn_parameter, timestep_embedding
from .causal import CausalCache, conv3d
from .wan_vae import LOGVAR_MAX, LOGVAR_MIN, WanPosterior, _check_video

PIXEL_NORM_EPS = 1e-8  # eps of the parameter-free RMS ("pixel") norms (original PixelNorm; diffusers RMSNorm(eps=1e-8))
TIME_PROJ_DIM = 256  # sinusoidal timestep width of the decoder's embedders (PixArt-alpha's, as in LTX-Video)
TIMESTEP_SCALE = 1000.0  # initial ``timestep_scale_multiplier``: decode timesteps in [0, 1] -> [0, 1000]
# LTX-Video's recommended decode settings for the timestep-conditioned decoder (0.9.1+; inference.py).
DEFAULT_DECODE_TIMESTEP = 0.05
DEFAULT_DECODE_NOISE_SCALE = 0.025
DEFAULT_DECODE_CHUNK = 4  # latent frames per decoding step (32 pixel frames): bounds the decoder's memory

DOWN_BLOCK = "LTXVideoDownBlock3D"  # 0.9.0 / 0.9.1 encoder stage: resnets, strided conv, channel-changing resnet
DOWN_BLOCK_095 = "LTXVideo095DownBlock3D"  # 0.9.5+ encoder stage: resnets, then a space-to-depth downsampler
# diffusers' ``downsample_type`` -> (time, height, width) stride of that downsampler
DOWNSAMPLE_STRIDES = {"conv": (2, 2, 2), "spatial": (1, 2, 2), "temporal": (2, 1, 1), "spatiotemporal": (2, 2, 2)}
UPSAMPLE_STRIDE = (2, 2, 2)  # every decoder upsampler doubles time, height and width


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
class BlockKind(Enum):
    """The kinds of blocks in the encoder's and decoder's flat block lists (the original's names)."""

    RES = "res_x"  # a group of residual blocks at one width (UNetMidBlock3D)
    RES_X_Y = "res_x_y"  # one residual block that changes the width
    DOWN_CONV = "compress_all"  # encoder: causal 3x3x3 conv with stride 2 in time, height and width
    DOWN_S2D = "compress_res"  # encoder: space-to-depth with a conv and an averaged shortcut (0.9.5+)
    UP = "compress_all_up"  # decoder: conv then depth-to-space, 2x in time, height and width


@dataclass(frozen=True)
class BlockSpec:
    """One block of the flat encoder or decoder list, derived from the config."""

    kind: BlockKind
    in_channels: int
    out_channels: int
    stage: int  # diffusers' down/up block index holding it; -1 for the mid block
    num_layers: int = 1  # RES: residual blocks in the group
    stride: tuple[int, int, int] = (1, 1, 1)  # resamplers: (time, height, width)
    inject_noise: bool = False  # residual blocks add per-channel-scaled spatial noise (0.9.1 decoder)
    residual: bool = False  # UP: add the shuffled, repeated input
    factor: int = 1  # UP: channel reduction of the upsampler (out = in / factor)


@dataclass
class LTXVAEConfig:
    """Hyper-parameters of the LTX-Video VAE, under diffusers' ``AutoencoderKLLTXVideo`` field names.

    Defaults are diffusers' defaults: the LTX-Video 0.9.0 VAE (419,193,649 parameters).
    Per-stage tuples run from the input side (encoder) or from the output side (decoder), as in
    diffusers.
    """

    in_channels: int = 3  # video channels into the encoder
    out_channels: int = 3  # video channels out of the decoder
    latent_channels: int = 128  # latent channels (the encoder also predicts one shared log-variance channel)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # encoder width per stage
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,) * 4  # encoder stage types (all the same)
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # decoder width per stage
    layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)  # encoder resnets per stage, then the mid block's
    decoder_layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)  # decoder resnets per stage, then the mid block's
    spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)  # encoder stage downsamples?
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)  # decoder stage upsamples?
    decoder_inject_noise: tuple[bool, ...] = (False,) * 5  # decoder stage (then mid block) injects noise?
    downsample_type: tuple[str, ...] = ("conv",) * 4  # 0.9.5 encoder downsamplers (DOWNSAMPLE_STRIDES keys)
    upsample_residual: tuple[bool, ...] = (False,) * 4  # decoder upsampler adds its shuffled input?
    upsample_factor: tuple[int, ...] = (1,) * 4  # decoder upsampler channel reduction
    timestep_conditioning: bool = False  # decoder conditioned on the decode timestep (0.9.1+)
    patch_size: int = 4  # pixels per side folded into channels before the encoder (and back after the decoder)
    patch_size_t: int = 1  # frames folded likewise: 1 in every release (kinema supports only 1)
    resnet_norm_eps: float = 1e-6  # eps of the LayerNorm on channel-changing shortcuts
    scaling_factor: float = 1.0  # extra latent scale of normalize_latents (1.0 in every release)
    encoder_causal: bool = True  # encoder convs see only past frames (True in every release)
    decoder_causal: bool = False  # decoder convs likewise (False in every release: centred in time)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        self.spatio_temporal_scaling = tuple(bool(v) for v in self.spatio_temporal_scaling)
        self.decoder_spatio_temporal_scaling = tuple(bool(v) for v in self.decoder_spatio_temporal_scaling)
        self.decoder_inject_noise = tuple(bool(v) for v in self.decoder_inject_noise)
        self.upsample_residual = tuple(bool(v) for v in self.upsample_residual)
        if self.patch_size_t != 1:
            raise CheckpointError(f"LTX VAE patch_size_t={self.patch_size_t} is not supported; kinema needs 1")
        encoder, decoder = self.encoder_plan(), self.decoder_plan()  # both validate the layout
        if self.spatial_compression != self.patch_size * 2 ** sum(b.kind is BlockKind.UP for b in decoder):
            raise CheckpointError("LTX VAE config: the decoder does not undo the encoder's spatial compression")
        if self.temporal_compression != 2 ** sum(b.kind is BlockKind.UP for b in decoder):
            raise CheckpointError("LTX VAE config: the decoder does not undo the encoder's temporal compression")
        if encoder[-1].out_channels <= 0 or decoder[0].in_channels <= 0:
            raise CheckpointError("LTX VAE config: channel counts must be positive")

    # -- the block lists --------------------------------------------------------------------------
    def encoder_plan(self) -> list[BlockSpec]:
        """The encoder's flat block list (diffusers' down blocks unrolled, then the mid block)."""
        types = set(self.down_block_types)
        if len(types) != 1 or not types <= {DOWN_BLOCK, DOWN_BLOCK_095}:
            raise CheckpointError(
                f"LTX VAE down_block_types={list(self.down_block_types)} not supported: "
                f"all {DOWN_BLOCK!r} (0.9.0/0.9.1) or all {DOWN_BLOCK_095!r} (0.9.5+)"
            )
        is_095 = DOWN_BLOCK_095 in types
        boc = self.block_out_channels
        n = len(boc) - (1 if is_095 else 0)
        _expect_len("down_block_types", self.down_block_types, n)
        _expect_len("spatio_temporal_scaling", self.spatio_temporal_scaling, n)
        _expect_len("downsample_type", self.downsample_type, n)
        _expect_len("layers_per_block", self.layers_per_block, n + 1)
        plan: list[BlockSpec] = []
        ch = boc[0]
        for i in range(n):
            out = boc[i + 1] if is_095 or i + 1 < n else boc[i]
            plan.append(BlockSpec(BlockKind.RES, ch, ch, i, num_layers=self.layers_per_block[i]))
            if self.spatio_temporal_scaling[i]:
                kind = self.downsample_type[i] if is_095 else "conv"
                if kind not in DOWNSAMPLE_STRIDES:
                    raise CheckpointError(f"LTX VAE downsample_type {kind!r} unknown; one of {sorted(DOWNSAMPLE_STRIDES)}")
                if kind == "conv":
                    plan.append(BlockSpec(BlockKind.DOWN_CONV, ch, ch, i, stride=DOWNSAMPLE_STRIDES[kind]))
                else:
                    plan.append(BlockSpec(BlockKind.DOWN_S2D, ch, out, i, stride=DOWNSAMPLE_STRIDES[kind]))
                    ch = out
            if not is_095 and out != ch:
                plan.append(BlockSpec(BlockKind.RES_X_Y, ch, out, i))
                ch = out
            if ch != out:
                raise CheckpointError(f"LTX VAE config: encoder stage {i} cannot change the width {ch} -> {out}")
        plan.append(BlockSpec(BlockKind.RES, ch, ch, -1, num_layers=self.layers_per_block[n]))
        return plan

    def decoder_plan(self) -> list[BlockSpec]:
        """The decoder's flat block list: the mid block, then per stage a width change, an upsampler, resnets."""
        boc = self.decoder_block_out_channels[::-1]
        n = len(boc)
        _expect_len("decoder_spatio_temporal_scaling", self.decoder_spatio_temporal_scaling, n)
        _expect_len("decoder_layers_per_block", self.decoder_layers_per_block, n + 1)
        _expect_len("decoder_inject_noise", self.decoder_inject_noise, n + 1)
        _expect_len("upsample_residual", self.upsample_residual, n)
        _expect_len("upsample_factor", self.upsample_factor, n)
        layers, noise = self.decoder_layers_per_block[::-1], self.decoder_inject_noise[::-1]
        scaling = self.decoder_spatio_temporal_scaling[::-1]
        residual, factors = self.upsample_residual[::-1], self.upsample_factor[::-1]
        ch = boc[0]  # the real width of the stream (diffusers' `output_channel`)
        plan = [BlockSpec(BlockKind.RES, ch, ch, -1, num_layers=layers[0], inject_noise=noise[0])]
        for i in range(n):
            f = factors[i]
            nominal_in, out = ch // f, boc[i] // f  # diffusers' widths for stage i
            if nominal_in != out:  # a channel-changing resnet (diffusers' up block conv_in)
                if f != 1 or self.timestep_conditioning or noise[i + 1]:
                    raise CheckpointError(
                        f"LTX VAE config: decoder stage {i} changes the width {ch} -> {out} together with "
                        "upsample_factor > 1, timestep conditioning or noise injection, which the reference "
                        "implementations cannot run either"
                    )
                plan.append(BlockSpec(BlockKind.RES_X_Y, ch, out, i))
                ch = out
            if scaling[i]:
                if ch != out * f:
                    raise CheckpointError(
                        f"LTX VAE config: decoder stage {i} upsampler expects {out * f} channels, gets {ch}"
                    )
                plan.append(BlockSpec(BlockKind.UP, ch, out, i, stride=UPSAMPLE_STRIDE, residual=residual[i], factor=f))
                ch = out
            if ch != out:
                raise CheckpointError(f"LTX VAE config: decoder stage {i} gets {ch} channels, expects {out}")
            plan.append(BlockSpec(BlockKind.RES, ch, ch, i, num_layers=layers[i + 1], inject_noise=noise[i + 1]))
        return plan

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along height and width: 32 for every release."""
        strides = [b.stride[1] for b in self.encoder_plan() if b.kind in (BlockKind.DOWN_CONV, BlockKind.DOWN_S2D)]
        return self.patch_size * math.prod(strides)

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame (after the first): 8 for every release."""
        strides = [b.stride[0] for b in self.encoder_plan() if b.kind in (BlockKind.DOWN_CONV, BlockKind.DOWN_S2D)]
        return self.patch_size_t * math.prod(strides)

    # -- diffusers' config.json ------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: dict) -> "LTXVAEConfig":
        """From diffusers' ``AutoencoderKLLTXVideo`` config dict; unsupported values raise CheckpointError."""
        cls_name = config.get("_class_name", "AutoencoderKLLTXVideo")
        if cls_name != "AutoencoderKLLTXVideo":
            raise CheckpointError(f"expected a diffusers AutoencoderKLLTXVideo config, got _class_name={cls_name!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in names and k not in _DIFFUSERS_DERIVED)
        if unknown:
            raise CheckpointError(
                f"unknown AutoencoderKLLTXVideo config field(s) {unknown}: not an LTX-Video VAE kinema supports"
            )
        out = cls(**{k: v for k, v in config.items() if k in names})
        for key, expected in out._derived().items():
            if config.get(key) not in (None, expected):
                raise CheckpointError(
                    f"AutoencoderKLLTXVideo {key}={config[key]} does not match the architecture ({expected})"
                )
        return out

    def to_diffusers(self) -> dict:
        """diffusers' ``AutoencoderKLLTXVideo`` config dict (``config.json`` content)."""
        out: dict = {"_class_name": "AutoencoderKLLTXVideo"}
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()})
        out.update(self._derived())
        return out

    def _derived(self) -> dict[str, int]:
        return dict(zip(_DIFFUSERS_DERIVED, (self.spatial_compression, self.temporal_compression)))

    # -- the original LTX-Video config (safetensors metadata) ---------------------------------------
    @classmethod
    def from_original(cls, config: dict) -> "LTXVAEConfig":
        """From an original ``CausalVideoAutoencoder`` config (the ``"vae"`` entry of the ``"config"``
        JSON in an LTX-Video single-file checkpoint's metadata). Keys the original ignores are ignored;
        layouts that diffusers' AutoencoderKLLTXVideo cannot express raise CheckpointError."""
        name = config.get("_class_name", "CausalVideoAutoencoder")
        if name != "CausalVideoAutoencoder":
            raise CheckpointError(f"expected an original LTX-Video CausalVideoAutoencoder config, got _class_name={name!r}")
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
        return cls(
            in_channels=config.get("in_channels", 3),
            out_channels=config.get("out_channels", 3),
            latent_channels=config["latent_channels"],
            patch_size=config.get("patch_size", 1),
            timestep_conditioning=config.get("timestep_conditioning", False),
            decoder_causal=config.get("causal_decoder", False),
            scaling_factor=config.get("scaling_factor", 1.0),
            **fields_,
        )


# diffusers fields that follow from the architecture (spatial, temporal compression).
_DIFFUSERS_DERIVED = ("spatial_compression_ratio", "temporal_compression_ratio")
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


def _expect_len(name: str, values: tuple, n: int) -> None:
    if len(values) != n:
        raise CheckpointError(f"LTX VAE config {name} needs {n} values for this layout; got {list(values)}")


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


def _ltx_091() -> LTXVAEConfig:
    return replace(
        LTXVAEConfig(),
        decoder_block_out_channels=(256, 512, 1024),
        decoder_layers_per_block=(5, 6, 7, 8),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(True, True, True, False),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
    )


def _ltx_095() -> LTXVAEConfig:
    return replace(
        _ltx_091(),
        block_out_channels=(128, 256, 512, 1024, 2048),
        down_block_types=(DOWN_BLOCK_095,) * 4,
        layers_per_block=(4, 6, 6, 2, 2),
        spatio_temporal_scaling=(True, True, True, True),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        decoder_layers_per_block=(5, 5, 5, 5),
        decoder_inject_noise=(False, False, False, False),
    )


# The released VAEs, by name (configs of diffusers' scripts/convert_ltx_to_diffusers.py).
LTX_VAE_PRESETS: dict[str, Callable[[], LTXVAEConfig]] = {
    "ltx-video-0.9.0": LTXVAEConfig,
    "ltx-video-0.9.1": _ltx_091,
    "ltx-video-0.9.5": _ltx_095,  # also the VAE of 0.9.7 and 0.9.8
}


# ------------------------------------------------------------------------------------------------
# Streaming helpers (the cache holds, per layer, the frames it still needs)
# ------------------------------------------------------------------------------------------------
def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _keep_from(cache: CausalCache, layer: nn.Module, frames: torch.Tensor, start: int) -> None:
    """Remember ``frames[:, :, start:]`` (possibly none) for ``layer``'s next call."""
    n = frames.shape[2] - start
    if n > 0:
        cache.keep(layer, frames, n)
    else:
        cache.begin(layer, frames)


def _repeat_edges(x: torch.Tensor, front: int, back: int) -> torch.Tensor:
    """Pad time by repeating the first frame ``front`` times and the last ``back`` times."""
    parts = [x[:, :, :1].expand(-1, -1, front, -1, -1)] if front else []
    parts.append(x)
    if back:
        parts.append(x[:, :, -1:].expand(-1, -1, back, -1, -1))
    return torch.cat(parts, dim=2) if len(parts) > 1 else x  # (B, C, front + T + back, H, W)


def _conv(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv`` on x (B, C, T, H, W); T shorter than the kernel gives zero output frames."""
    if x.shape[2] < conv.kernel_size[0]:
        b, _, _, h, w = x.shape
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = conv.kernel_size, conv.stride, conv.padding
        return x.new_empty(b, conv.out_channels, 0, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    return conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding)  # (B, C_out, T', H', W')


def _add_delayed(cache: CausalCache, layer: nn.Module, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``h + skip`` for a branch ``h`` that runs behind its shortcut: the shortcut frames that ``h``
    has not reached yet wait in the cache under ``layer``."""
    held = cache.get(layer)
    if held is not None and held.shape[2]:
        skip = torch.cat([held, skip], dim=2)  # (B, C, held + T, H, W)
    n = h.shape[2]
    out = h + skip[:, :, :n]
    _keep_from(cache, layer, skip, n)
    return out


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    """RMS norm over channels without a scale (LTX's PixelNorm), reduced in float32: (B, C, ...) -> same."""
    var = x.float().pow(2).mean(dim=1, keepdim=True)  # (B, 1, T, H, W)
    return (x * torch.rsqrt(var + PIXEL_NORM_EPS)).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
class LTXConv3d(nn.Module):
    """A 3D convolution whose time padding repeats the edge frames; causal or centred; run as a stream.

    Causal (the encoder): ``kt - 1`` copies of the first frame in front. Centred (the decoder):
    ``(kt - 1) / 2`` copies of the first frame in front and of the last frame behind. Space is
    zero-padded by ``k // 2``. The weights live in ``conv`` (an ``nn.Conv3d``), the original's name.

    LTX's edge repetition is not :class:`~kinema.models.vae.causal.CausalConv3d`'s zero padding, and a
    centred conv needs a frame after each output frame, so this layer keeps its own stream state in
    the :class:`CausalCache`: the input frames its next windows still need. A centred conv therefore
    runs ``lag`` frames behind its input until a call with ``end=True`` (the stream's last) pads the
    end and emits the rest.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, int, int] = 1,
        causal: bool = True,
    ) -> None:
        super().__init__()
        k, s = _triple(kernel_size), _triple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, k, stride=s, padding=(0, k[1] // 2, k[2] // 2))
        self.front = k[0] - 1 if causal else (k[0] - 1) // 2  # edge copies before the stream
        self.lag = 0 if causal else (k[0] - 1) // 2  # output frames behind the input (and edge copies after)

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool) -> torch.Tensor:
        """x: (B, C_in, T, H, W), the stream's next frames -> (B, C_out, T', H', W'), its next outputs."""
        kt, st = self.conv.kernel_size[0], self.conv.stride[0]
        held = cache.get(self)
        if held is None:  # the stream begins with this chunk: repeat its first frame in front
            if x.shape[2] == 0:
                if end:
                    raise KinemaError("cannot run an LTX VAE convolution on a stream of zero frames")
                return _conv(x, self.conv)
            buf = _repeat_edges(x, self.front, 0)
        else:
            buf = torch.cat([held, x], dim=2) if held.shape[2] else x  # (B, C_in, n + T, H, W)
        if end and self.lag:
            buf = _repeat_edges(buf, 0, self.lag)
        n_out = max((buf.shape[2] - kt) // st + 1, 0)
        _keep_from(cache, self, buf, n_out * st)  # the frames from the next window on
        return _conv(buf, self.conv)  # (B, C_out, n_out, H', W')


class ResnetBlock3D(nn.Module):
    """pixel norm -> (adaLN) -> SiLU -> conv, twice, plus the input (LayerNorm + 1x1x1 conv if the width
    changes). The 0.9.1 decoder adds per-channel-scaled spatial noise after each conv and modulates
    with the decode timestep (``scale_shift_table`` plus the group's timestep embedding)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        eps: float,
        causal: bool,
        inject_noise: bool = False,
        timestep_conditioning: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = LTXConv3d(in_channels, out_channels, 3, causal=causal)
        self.conv2 = LTXConv3d(out_channels, out_channels, 3, causal=causal)
        self.norm3 = nn.LayerNorm(in_channels, eps=eps) if in_channels != out_channels else None
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.per_channel_scale1 = nn.Parameter(torch.zeros(in_channels, 1, 1)) if inject_noise else None
        self.per_channel_scale2 = nn.Parameter(torch.zeros(in_channels, 1, 1)) if inject_noise else None
        self.scale_shift_table = None  # shift1, scale1, shift2, scale2 offsets of the timestep modulation
        if timestep_conditioning:
            self.scale_shift_table = randn_parameter(4, in_channels, divide_by=in_channels**0.5)
        self.lag = self.conv1.lag + self.conv2.lag

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool, cond: "Conditioning | None" = None) -> torch.Tensor:
        """x: (B, C_in, T, H, W) -> (B, C_out, T', H, W), T' = T - lag at first, all at the end."""
        ada = cond.modulation[self] if self.scale_shift_table is not None else None  # (B, 4, C, 1, 1, 1)
        noise = cond.noise[self] if self.per_channel_scale1 is not None else None  # 2 x (H, W)
        h = pixel_norm(x)
        if ada is not None:
            h = h * (1 + ada[:, 1]) + ada[:, 0]
        h = self.conv1(F.silu(h), cache, end)  # (B, C_out, T', H, W)
        if noise is not None:
            h = h + (noise[0] * self.per_channel_scale1)[None, :, None]
        h = pixel_norm(h)
        if ada is not None:
            h = h * (1 + ada[:, 3]) + ada[:, 2]
        h = self.conv2(F.silu(h), cache, end)  # (B, C_out, T'', H, W)
        if noise is not None:
            h = h + (noise[1] * self.per_channel_scale2)[None, :, None]
        skip = x
        if self.norm3 is not None:
            skip = self.norm3(skip.movedim(1, -1)).movedim(-1, 1)  # LayerNorm over channels
            skip = _conv(skip, self.conv_shortcut)  # (B, C_out, T, H, W)
        return _add_delayed(cache, self, h, skip)


class ResGroup(nn.Module):
    """Residual blocks at one width (the original's UNetMidBlock3D); in a timestep-conditioned decoder,
    ``time_embedder`` maps the decode timestep to the blocks' four modulation vectors."""

    def __init__(self, spec: BlockSpec, eps: float, causal: bool, timestep_conditioning: bool) -> None:
        super().__init__()
        c = spec.in_channels
        self.res_blocks = nn.ModuleList(
            ResnetBlock3D(c, c, eps, causal, spec.inject_noise, timestep_conditioning) for _ in range(spec.num_layers)
        )
        self.time_embedder = mlp(TIME_PROJ_DIM, 4 * c, 4 * c, nn.SiLU()) if timestep_conditioning else None

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool, cond: "Conditioning | None" = None) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x, cache, end, cond)  # (B, C, T', H, W)
        return x


class SpaceToDepthDownsample(nn.Module):
    """0.9.5 encoder downsampler: a causal conv folded space-to-depth, plus the input folded the same
    way and averaged over channel groups. A temporal stride doubles the stream's first frame."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int], causal: bool) -> None:
        super().__init__()
        self.stride = stride
        self.group_size = in_channels * math.prod(stride) // out_channels
        self.conv = LTXConv3d(in_channels, out_channels // math.prod(stride), 3, causal=causal)

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool) -> torch.Tensor:
        st, sh, sw = self.stride
        if st > 1 and self.conv not in cache:  # the stream's first frame
            x = torch.cat([x[:, :, : st - 1], x], dim=2)
        fold = "b c (t p1) (h p2) (w p3) -> b (c p1 p2 p3) t h w"
        skip = rearrange(x, fold, p1=st, p2=sh, p3=sw)  # (B, C st sh sw, T/st, H/sh, W/sw)
        skip = reduce(skip, "b (c g) t h w -> b c t h w", "mean", g=self.group_size)  # (B, C_out, ...)
        h = rearrange(self.conv(x, cache, end), fold, p1=st, p2=sh, p3=sw)  # (B, C_out, T/st, H/sh, W/sw)
        return _add_delayed(cache, self, h, skip)


class DepthToSpace(nn.Module):
    """Unfold channels into (time, height, width): (B, C s0 s1 s2, T, H, W) -> (B, C, s0 T, s1 H, s2 W)."""

    def __init__(self, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1, s2 = self.stride
        return rearrange(x, "b (c p1 p2 p3) t h w -> b c (t p1) (h p2) (w p3)", p1=s0, p2=s1, p3=s2)


class DepthToSpaceUpsample(nn.Module):
    """Decoder upsampler: conv to ``8 C / factor`` channels, depth-to-space (2x in time, height, width),
    optionally plus the input unfolded the same way and tiled; the stream's first frame is dropped,
    so T latent frames give 2T - 1."""

    def __init__(self, spec: BlockSpec, causal: bool) -> None:
        super().__init__()
        n = math.prod(spec.stride)
        self.stride = spec.stride
        self.residual = spec.residual
        self.repeats = n // spec.factor
        self.conv = LTXConv3d(spec.in_channels, n * spec.in_channels // spec.factor, 3, causal=causal)
        self.shuffle = DepthToSpace(spec.stride)
        self.lag = self.conv.lag

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool) -> torch.Tensor:
        """x: (B, C, T, H, W) -> (B, C / factor, ~2T, 2H, 2W)."""
        h = self.shuffle(self.conv(x, cache, end))  # (B, C', 2T', 2H, 2W)
        if self.residual:
            h = _add_delayed(cache, self, h, self.shuffle(x).repeat(1, self.repeats, 1, 1, 1))
        drop = self.stride[0] - 1
        if drop and h.shape[2] and self.shuffle not in cache:  # the output stream begins: drop its first frame
            cache.begin(self.shuffle, h)
            h = h[:, :, drop:]
        return h


def _make_block(spec: BlockSpec, config: LTXVAEConfig, causal: bool, timestep_conditioning: bool) -> nn.Module:
    eps = config.resnet_norm_eps
    if spec.kind is BlockKind.RES:
        return ResGroup(spec, eps, causal, timestep_conditioning)
    if spec.kind is BlockKind.RES_X_Y:
        return ResnetBlock3D(spec.in_channels, spec.out_channels, eps, causal, spec.inject_noise)
    if spec.kind is BlockKind.DOWN_CONV:
        return LTXConv3d(spec.in_channels, spec.out_channels, 3, stride=spec.stride, causal=causal)
    if spec.kind is BlockKind.DOWN_S2D:
        return SpaceToDepthDownsample(spec.in_channels, spec.out_channels, spec.stride, causal)
    return DepthToSpaceUpsample(spec, causal)


# ------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Video (B, 3, T, H, W) -> moments (B, latent + 1, T', H/32, W/32): latent means, then one shared
    log-variance channel. Causal; one chunk of a stream per call."""

    def __init__(self, config: LTXVAEConfig) -> None:
        super().__init__()
        plan = config.encoder_plan()
        causal = config.encoder_causal
        self.patch_size = config.patch_size
        self.conv_in = LTXConv3d(config.in_channels * config.patch_size**2, plan[0].in_channels, 3, causal=causal)
        self.down_blocks = nn.ModuleList(_make_block(spec, config, causal, False) for spec in plan)
        self.conv_out = LTXConv3d(plan[-1].out_channels, config.latent_channels + 1, 3, causal=causal)

    def forward(self, x: torch.Tensor, cache: CausalCache, end: bool) -> torch.Tensor:
        p = self.patch_size
        x = rearrange(x, "b c t (h ph) (w pw) -> b (c pw ph) t h w", ph=p, pw=p)  # (B, 3 p p, T, H/p, W/p)
        x = self.conv_in(x, cache, end)  # (B, C0, T, H/p, W/p)
        for block in self.down_blocks:
            x = block(x, cache, end)  # down to (B, C, T', H/32, W/32)
        return self.conv_out(F.silu(pixel_norm(x)), cache, end)  # (B, latent + 1, T', H/32, W/32)


@dataclass
class Conditioning:
    """What the decoder's blocks add for one video, computed once per decode."""

    modulation: dict[nn.Module, torch.Tensor]  # resnet -> (B, 4, C, 1, 1, 1): shift1, scale1, shift2, scale2
    last: torch.Tensor | None  # (B, 2, C, 1, 1, 1): shift, scale after the decoder's last norm
    noise: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # resnet -> (H, W) noise after conv1, conv2


@dataclass(frozen=True)
class DecoderStep:
    """One link of the decoder's streaming chain."""

    run: Callable[[torch.Tensor, CausalCache, bool, Conditioning], torch.Tensor]  # (x, cache, end, cond) -> x
    lag: float  # frames it holds back until the end of the stream, in latent frames


class Decoder(nn.Module):
    """Latents (B, 128, T, h, w) -> video (B, 3, 8(T-1)+1, 32h, 32w), streamed chunk by chunk."""

    def __init__(self, config: LTXVAEConfig) -> None:
        super().__init__()
        plan = config.decoder_plan()
        causal, tc = config.decoder_causal, config.timestep_conditioning
        self.patch_size = config.patch_size
        self.conv_in = LTXConv3d(config.latent_channels, plan[0].in_channels, 3, causal=causal)
        self.up_blocks = nn.ModuleList(_make_block(spec, config, causal, tc) for spec in plan)
        c = plan[-1].out_channels
        self.conv_out = LTXConv3d(c, config.out_channels * config.patch_size**2, 3, causal=causal)
        self.timestep_scale_multiplier = nn.Parameter(torch.tensor(TIMESTEP_SCALE)) if tc else None
        self.last_time_embedder = mlp(TIME_PROJ_DIM, 2 * c, 2 * c, nn.SiLU()) if tc else None
        self.last_scale_shift_table = randn_parameter(2, c, divide_by=c**0.5) if tc else None

    def steps(self) -> list[DecoderStep]:
        """The decoder as a chain of streaming steps: conv_in, each residual block and upsampler, the head."""
        steps = [DecoderStep(lambda x, cache, end, cond: self.conv_in(x, cache, end), self.conv_in.lag)]
        rate = 1  # frames per latent frame at this point of the chain
        for block in self.up_blocks:
            if isinstance(block, ResGroup):
                steps += [DecoderStep(b, b.lag / rate) for b in block.res_blocks]
            elif isinstance(block, DepthToSpaceUpsample):
                steps.append(DecoderStep(lambda x, cache, end, cond, b=block: b(x, cache, end), block.lag / rate))
                rate *= block.stride[0]
            else:
                steps.append(DecoderStep(block, block.lag / rate))
        steps.append(DecoderStep(self.head, self.conv_out.lag / rate))
        return steps

    def head(self, x: torch.Tensor, cache: CausalCache, end: bool, cond: Conditioning) -> torch.Tensor:
        """Last norm, (timestep modulation), SiLU, conv and unpatchify: (B, C, T, H, W) -> (B, 3, T', pH, pW)."""
        x = pixel_norm(x)
        if cond.last is not None:
            x = x * (1 + cond.last[:, 1]) + cond.last[:, 0]
        x = self.conv_out(F.silu(x), cache, end)  # (B, 3 p p, T', H, W)
        p = self.patch_size
        return rearrange(x, "b (c pw ph) t h w -> b c t (h ph) (w pw)", ph=p, pw=p)  # (B, 3, T', pH, pW)

    def conditioning(
        self, timestep: torch.Tensor | None, size: tuple[int, int], generator: torch.Generator | None, like: torch.Tensor
    ) -> Conditioning:
        """Modulations from the decode timestep (B,) and the injected noise (drawn from ``generator`` in
        diffusers' order) for latents of spatial ``size``, like ``like`` in dtype and device."""
        modulation: dict[nn.Module, torch.Tensor] = {}
        last = None
        if self.timestep_scale_multiplier is not None:
            t = timestep * self.timestep_scale_multiplier  # (B,)
            emb = timestep_embedding(t, TIME_PROJ_DIM).to(like.dtype)  # (B, 256)
            for group in self.up_blocks:
                if isinstance(group, ResGroup) and group.time_embedder is not None:
                    e = rearrange(group.time_embedder(emb), "b (four c) -> b four c 1 1 1", four=4)  # (B, 4, C, 1, 1, 1)
                    for block in group.res_blocks:
                        modulation[block] = e + block.scale_shift_table[None, :, :, None, None, None]
            e = rearrange(self.last_time_embedder(emb), "b (two c) -> b two c 1 1 1", two=2)  # (B, 2, C, 1, 1, 1)
            last = e + self.last_scale_shift_table[None, :, :, None, None, None]
        noise: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        h, w = size
        for block in self.up_blocks:
            resnets = block.res_blocks if isinstance(block, ResGroup) else [block]
            for r in resnets:
                if isinstance(r, ResnetBlock3D) and r.per_channel_scale1 is not None:
                    noise[r] = (_randn((h, w), generator, like), _randn((h, w), generator, like))
            if isinstance(block, DepthToSpaceUpsample):
                h, w = h * block.stride[1], w * block.stride[2]
        return Conditioning(modulation, last, noise)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn on the generator's device, like ``like`` in dtype and device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _flush_groups(lags: Sequence[float], budget: float) -> list[int]:
    """Where to cut the chain when announcing the end of the stream: consecutive steps whose held-back
    frames add up to at most ``budget`` latent frames (or a single step) end together."""
    ends, held = [], 0.0
    for i, lag in enumerate(lags):
        if held and held + lag > budget:
            ends.append(i)
            held = 0.0
        held += lag
    ends.append(len(lags))
    return ends


# ------------------------------------------------------------------------------------------------
# The autoencoder
# ------------------------------------------------------------------------------------------------
class LTXVAE(nn.Module):
    """The LTX-Video causal video VAE: ``encode`` video to latents, ``decode`` latents to video.

    Parameters and buffers carry the original names: ``encoder.*``, ``decoder.*`` and the latent
    statistics ``latents_mean`` / ``latents_std`` (the original's ``per_channel_statistics``).
    """

    _keep_in_fp32 = ("latents_mean", "latents_std")

    def __init__(self, config: LTXVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LTXVAEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latents_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latents_std", torch.ones(config.latent_channels))

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_in.conv.weight.device

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor, chunk_size: int | None = None) -> WanPosterior:
        """Encode a video to the posterior over its latents.

        Args:
            video: (B, 3, F, H, W) in [-1, 1], F = 8k + 1, H and W multiples of 32; moved to the
                model's device and dtype.
            chunk_size: pixel frames per step after the first 1 + ``chunk_size``, a multiple of 8
                (None: the whole clip at once). Smaller chunks use less memory; the result is the same.
        Returns:
            a posterior with mean and log-variance (B, 128, k + 1, H/32, W/32); the log-variance is
            one channel shared by all latent channels (LTX's "uniform" log-variance), clamped.
        """
        tc, sc = self.temporal_compression, self.spatial_compression
        _check_video(video, self.config.in_channels, tc, sc)
        if chunk_size is not None:
            if chunk_size <= 0 or chunk_size % tc:
                raise KinemaError(f"encode chunk_size must be a positive multiple of {tc}; got {chunk_size}")
            if not self.config.encoder_causal:
                raise KinemaError("this VAE's encoder is not causal: encode it with chunk_size=None")
        video = video.to(device=self.device, dtype=self.dtype)
        f = video.shape[2]
        bounds = [0, f] if chunk_size is None else [0, *range(1 + chunk_size, f, chunk_size), f]
        cache = CausalCache()
        out = [self.encoder(video[:, :, a:b], cache, b == f) for a, b in zip(bounds[:-1], bounds[1:])]
        moments = torch.cat(out, dim=2) if len(out) > 1 else out[0]  # (B, C + 1, F', h, w)
        c = self.config.latent_channels
        mean = moments[:, :c].contiguous()  # (B, C, F', h, w)
        logvar = moments[:, c:].expand_as(mean).clamp(LOGVAR_MIN, LOGVAR_MAX)  # one channel, broadcast
        return WanPosterior(mean, logvar)

    # -- decoding -------------------------------------------------------------------------------
    def decode_iter(
        self,
        latents: torch.Tensor,
        timestep: float | Sequence[float] | torch.Tensor | None = None,
        decode_noise_scale: float | Sequence[float] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = DEFAULT_DECODE_CHUNK,
    ) -> Iterator[torch.Tensor]:
        """Decode step by step, yielding pixel frames (B, 3, f, 32h, 32w) in [-1, 1] as they are ready.

        Args:
            latents: (B, 128, T, h, w) un-normalised latents (see :meth:`denormalize_latents`).
            timestep: decode timestep in [0, 1] of a timestep-conditioned decoder (0.9.1+), one value
                or one per sample; None means 0.0 (diffusers' default). LTX-Video recommends
                :data:`DEFAULT_DECODE_TIMESTEP`. An unconditioned decoder (0.9.0) takes none.
            decode_noise_scale: blend ``(1 - s) z + s noise`` before decoding, as diffusers'
                LTXPipeline does (None: the timestep's value, the pipeline's rule; LTX-Video
                recommends :data:`DEFAULT_DECODE_NOISE_SCALE`). Only for conditioned decoders.
            generator: draws that noise, then the decoder's injected spatial noise (0.9.1), in
                diffusers' order (None: the global generator of the device).
            chunk_size: latent frames fed per step, and the most latent frames' worth that any step
                pushes through any layer (None: the whole clip at once). The result is the same.
        Yields:
            the video's frames in order, 8(T - 1) + 1 in all; the first steps may yield nothing while
            the centred convolutions wait for later frames.
        """
        if chunk_size is not None and chunk_size <= 0:
            raise KinemaError(f"decode chunk_size must be positive (or None); got {chunk_size}")
        cap_heap_growth()  # resident memory bounded like the live tensors (see kinema.runtime)
        z, cond = self._prepare_decode(latents, timestep, decode_noise_scale, generator)
        steps = self.decoder.steps()
        cache = CausalCache()
        inputs: list[tuple[int, ...]] = []  # (B, C, H, W) entering each step, for zero-frame inputs

        def run(x: torch.Tensor, first: int, n_ended: int) -> torch.Tensor:
            for i in range(first, len(steps)):
                if i == len(inputs):
                    inputs.append((x.shape[0], x.shape[1], x.shape[3], x.shape[4]))
                x = steps[i].run(x, cache, i < n_ended, cond)
            return x.clamp(-1.0, 1.0)

        if chunk_size is None:
            yield run(z, 0, len(steps))
            return
        for start in range(0, z.shape[2], chunk_size):  # feed the latents; every step holds its lag back
            y = run(z[:, :, start : start + chunk_size], 0, 0)
            if y.shape[2]:
                yield y
        first = 0
        for stop in _flush_groups([s.lag for s in steps], chunk_size):  # then announce the end, a group at a time
            b, c, h, w = inputs[first]
            y = run(z.new_empty(b, c, 0, h, w), first, stop)
            if y.shape[2]:
                yield y
            first = stop

    def decode(
        self,
        latents: torch.Tensor,
        timestep: float | Sequence[float] | torch.Tensor | None = None,
        decode_noise_scale: float | Sequence[float] | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        chunk_size: int | None = DEFAULT_DECODE_CHUNK,
    ) -> torch.Tensor:
        """Decode latents (B, 128, T, h, w) to a video (B, 3, 8(T-1)+1, 32h, 32w) in [-1, 1].

        Arguments as :meth:`decode_iter`; the frames are written into one preallocated output.
        """
        b, _, t, h, w = latents.shape
        tc, sc = self.temporal_compression, self.spatial_compression
        out = None
        pos = 0
        for x in self.decode_iter(latents, timestep, decode_noise_scale, generator, chunk_size):
            if out is None:
                out = x.new_empty(b, x.shape[1], tc * (t - 1) + 1, h * sc, w * sc)  # (B, 3, F, H, W)
            out[:, :, pos : pos + x.shape[2]] = x
            pos += x.shape[2]
        assert out is not None and pos == out.shape[2], "the decoder stream lost frames"
        return out

    def forward(
        self,
        video: torch.Tensor,
        timestep: float | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reconstruct a video (B, 3, F, H, W): decode the posterior's mean (or a sample of it)."""
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z, timestep, generator=generator)

    def _prepare_decode(self, latents, timestep, decode_noise_scale, generator) -> tuple[torch.Tensor, Conditioning]:
        c = self.config.latent_channels
        if latents.dim() != 5 or latents.shape[1] != c:
            raise KinemaError(f"latents must be (B, {c}, T, h, w); got {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise KinemaError("latents must have at least one frame")
        z = latents.to(device=self.device, dtype=self.dtype)
        b = z.shape[0]
        t = None
        if not self.config.timestep_conditioning:
            if timestep is not None or decode_noise_scale is not None:
                raise KinemaError(
                    "this VAE's decoder is not timestep-conditioned (LTX-Video 0.9.0): "
                    "pass timestep=None and decode_noise_scale=None"
                )
        else:
            t = _per_sample(0.0 if timestep is None else timestep, b, z)  # (B,)
            s = t if decode_noise_scale is None else _per_sample(decode_noise_scale, b, z)
            if bool((s != 0).any()):
                noise = _randn(tuple(z.shape), generator, z)  # (B, C, T, h, w)
                s = s.view(b, 1, 1, 1, 1)
                z = (1 - s) * z + s * noise
        return z, self.decoder.conditioning(t, (z.shape[3], z.shape[4]), generator, z)

    # -- latent normalisation -------------------------------------------------------------------
    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.latent_channels, 1, 1, 1)
        return self.latents_mean.float().to(z.device).view(shape), self.latents_std.float().to(z.device).view(shape)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the diffusion model's space: ``(z - mean) * scaling_factor / std`` (float32 math)."""
        mean, std = self._stats(z)
        return ((z.float() - mean) * self.config.scaling_factor / std).to(z.dtype)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize_latents`: ``z * std / scaling_factor + mean`` (float32 math)."""
        mean, std = self._stats(z)
        return (z.float() * std / self.config.scaling_factor + mean).to(z.dtype)


def _per_sample(value, b: int, like: torch.Tensor) -> torch.Tensor:
    """One value, or one per sample, as a (B,) tensor like ``like`` in dtype and device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() not in (1, b):
        raise KinemaError(f"decode timestep / noise scale needs 1 or {b} values; got {t.numel()}")
    return t.expand(b)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
DIFFUSERS_WEIGHTS_STEM = "diffusion_pytorch_model"


def _infer_preset(state: dict[str, torch.Tensor], timestep_key: str) -> LTXVAEConfig:
    """The released VAE whose layout the tensors have (diffusers' own single-file detection)."""
    conv_out = state.get("encoder.conv_out.conv.weight")
    if conv_out is not None and conv_out.shape[1] == _ltx_095().block_out_channels[-1]:
        return _ltx_095()
    return _ltx_091() if timestep_key in state else LTXVAEConfig()


def load_ltx_vae(
    path: str | os.PathLike,
    config: LTXVAEConfig | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LTXVAE:
    """Load an LTX-Video VAE from a diffusers ``vae/`` directory or an original single file.

    Args:
        path: a diffusers directory (``config.json`` with ``_class_name`` AutoencoderKLLTXVideo and
            ``diffusion_pytorch_model.safetensors``; a model root with a ``vae/`` folder also works),
            or one ``.safetensors`` file: an original LTX-Video checkpoint (the VAE's keys are those
            prefixed ``vae.``; the rest, the transformer, is skipped) or a VAE alone in the original or
            diffusers layout.
        config: the architecture of a single file. Default: the ``"vae"`` entry of the ``"config"``
            JSON in the file's metadata (original checkpoints carry one), else the release the keys
            show (0.9.0, 0.9.1 or 0.9.5). A directory's ``config.json`` (or a file's metadata) is the
            source of truth: a different ``config`` raises.
        dtype: cast the weights to this dtype (None keeps the stored dtype); the latent statistics
            stay float32.
        device: put the weights here (None: CPU).
    Returns:
        the :class:`LTXVAE` in eval mode, without gradients.
    """
    import json

    from ...checkpoints.io import (
        build_on_meta,
        load_into,
        load_sharded_safetensors,
        load_weights,
        read_json,
        safetensors_metadata,
    )
    from ...checkpoints.ltx_vae_keys import ORIGINAL_IGNORED_KEYS, ORIGINAL_KEYS, ORIGINAL_PREFIX, diffusers_keys

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"
        stored = LTXVAEConfig.from_diffusers(read_json(path / "config.json"))
        if config is not None and config != stored:
            raise CheckpointError(f"{path / 'config.json'} does not match the config passed to load_ltx_vae; pass none")
        config = stored
        state = diffusers_keys(config).to_ours(load_sharded_safetensors(path, DIFFUSERS_WEIGHTS_STEM))
    else:
        state = load_weights(path)
        if any(k.startswith(ORIGINAL_PREFIX) for k in state):  # a whole LTX-Video checkpoint: take the VAE
            state = {k[len(ORIGINAL_PREFIX) :]: v for k, v in state.items() if k.startswith(ORIGINAL_PREFIX)}
        meta = safetensors_metadata(path) if path.suffix == ".safetensors" else {}
        if "config" in meta:
            try:
                stored_vae = json.loads(meta["config"]).get("vae")
            except (json.JSONDecodeError, AttributeError) as e:
                raise CheckpointError(f"{path} has an unreadable 'config' in its metadata: {e}") from None
            if stored_vae is not None:
                stored = LTXVAEConfig.from_original(stored_vae)
                if config is not None and config != stored:
                    raise CheckpointError(
                        f"{path}'s metadata config does not match the config passed to load_ltx_vae; pass none"
                    )
                config = stored
        if any(k.startswith("decoder.mid_block.") for k in state):  # diffusers layout in one file
            config = config or _infer_preset(state, "decoder.time_embedder.timestep_embedder.linear_1.weight")
            state = diffusers_keys(config).to_ours(state)
        else:
            config = config or _infer_preset(state, "decoder.last_time_embedder.timestep_embedder.linear_1.weight")
            state = ORIGINAL_KEYS.to_ours({k: v for k, v in state.items() if k not in ORIGINAL_IGNORED_KEYS})
    model = build_on_meta(lambda: LTXVAE(config))
    load_into(model, state, dtype=dtype, device=device, what="LTX-Video VAE")
    return model.eval().requires_grad_(False)
