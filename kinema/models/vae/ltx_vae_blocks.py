"""The LTX-Video VAE's layers, run as streams: causal or centred 3D convolutions with edge
repetition, residual blocks, space-to-depth / depth-to-space resamplers, and the encoder and the
streamed decoder built from a config's block plan (see :mod:`kinema.models.vae.ltx_vae` for how
the stream gives exact results in bounded memory)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from ...errors import KinemaError
from ..layers import mlp, randn_parameter, timestep_embedding
from .causal import CausalCache, conv3d
from .ltx_vae_config import BlockKind, BlockSpec, LTXVAEConfig

PIXEL_NORM_EPS = 1e-8  # eps of the parameter-free RMS ("pixel") norms (original PixelNorm; diffusers RMSNorm(eps=1e-8))
TIME_PROJ_DIM = 256  # sinusoidal timestep width of the decoder's embedders (PixArt-alpha's, as in LTX-Video)
TIMESTEP_SCALE = 1000.0  # initial ``timestep_scale_multiplier``: decode timesteps in [0, 1] -> [0, 1000]


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


def flush_groups(lags: Sequence[float], budget: float) -> list[int]:
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
