"""The LTX-Video VAE's configuration: diffusers' ``AutoencoderKLLTXVideo`` fields, the flat block
plans they unroll to, and the released VAEs as presets (the layers are in
:mod:`kinema.models.vae.ltx_vae_blocks`, the autoencoder in :mod:`kinema.models.vae.ltx_vae`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Callable

from ...errors import CheckpointError

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


def _expect_len(name: str, values: tuple, n: int) -> None:
    if len(values) != n:
        raise CheckpointError(f"LTX VAE config {name} needs {n} values for this layout; got {list(values)}")


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


def ltx_vae_preset(name: str) -> LTXVAEConfig:
    """The config of a released VAE by name (a key of :data:`LTX_VAE_PRESETS`)."""
    return LTX_VAE_PRESETS[name]()
