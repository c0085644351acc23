"""The Wan 2.1 video autoencoder: a causal 3D VAE with stride (4, 8, 8) and 16 latent channels.

Architecture and parameter names are those of the original release (Wan-Video/Wan2.1,
``wan/modules/vae.py``), so ``Wan2.1_VAE.pth`` loads with an identity key map; diffusers'
``AutoencoderKLWan`` layout loads through :mod:`kinema.checkpoints.wan_vae`.

Time is processed in chunks with an explicit :class:`~kinema.models.vae.causal.CausalCache`:
encoding takes frames 1, 4, 4, ... and decoding one latent frame at a time (1 then 4 pixel
frames each), so activation memory does not grow with the length of the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ...errors import CheckpointError, KinemaError
from ...schema import (
    UNIT_BELOW_ONE,
    bool_tuple,
    check_ints,
    check_numbers,
    int_tuple,
    is_finite_number,
)
from ..codec import CodecProperties
from .causal import CausalCache, CausalConv3d, conv3d, preferred_format

# Wan's per-channel statistics of the latents of its training videos (wan/modules/vae.py, WanVAE;
# the same numbers are diffusers' AutoencoderKLWan defaults).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

# Posterior log-variance clamp of diffusers' DiagonalGaussianDistribution and Wan's ``sample``.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
# F.normalize's floor on the norm (RMS_norm in wan/modules/vae.py normalises with F.normalize).
NORM_EPS = 1e-12


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass
class WanVAEConfig:
    """Hyper-parameters of the Wan 2.1 VAE; defaults are the released model (126,892,531 params)."""

    base_dim: int = 96  # channels of the first encoder stage (and of the last decoder stage)
    z_dim: int = 16  # latent channels (the encoder predicts 2 * z_dim: mean and log-variance)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier of each stage
    num_res_blocks: int = 2  # residual blocks per encoder stage (the decoder has one more)
    attn_scales: tuple[float, ...] = ()  # scales with attention between res blocks: none in Wan 2.1
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # time halved after stage i? (decoder mirrors)
    dropout: float = 0.0  # dropout inside residual blocks (training only)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN  # per-channel latent mean, for normalisation
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD  # per-channel latent std, for normalisation
    in_channels: int = 3  # video channels into the encoder
    out_channels: int = 3  # video channels out of the decoder

    def __post_init__(self) -> None:
        owner = "Wan VAE"
        self.dim_mult = int_tuple(owner, "dim_mult", self.dim_mult)
        self.temporal_downsample = bool_tuple(owner, "temporal_downsample", self.temporal_downsample)
        check_ints(owner, self, ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"))
        check_numbers(owner, self, {"dropout": UNIT_BELOW_ONE})
        for name in ("attn_scales", "latents_mean", "latents_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(is_finite_number(v) for v in values):
                raise CheckpointError(f"{owner} {name} must be a list of numbers; got {values!r}")
            setattr(self, name, tuple(float(v) for v in values))
        if self.attn_scales:
            raise CheckpointError(
                f"Wan VAE attn_scales={list(self.attn_scales)} is not supported (Wan 2.1 has none); use []"
            )
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise CheckpointError(
                f"Wan VAE temporal_downsample needs one flag per downsampling stage "
                f"({len(self.dim_mult) - 1} for dim_mult={list(self.dim_mult)}); got {list(self.temporal_downsample)}"
            )
        if not (len(self.latents_mean) == len(self.latents_std) == self.z_dim):
            raise CheckpointError(
                f"Wan VAE latents_mean/latents_std need z_dim={self.z_dim} values each; "
                f"got {len(self.latents_mean)} and {len(self.latents_std)}"
            )
        if not all(v > 0 for v in self.latents_std):
            raise CheckpointError(f"Wan VAE latents_std must be positive (latents are divided by it); got {list(self.latents_std)}")

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame (after the first): 4 for Wan 2.1."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along height and width: 8 for Wan 2.1."""
        return 2 ** (len(self.dim_mult) - 1)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
def _inplace_ok(*tensors: torch.Tensor) -> bool:
    """In-place updates are safe unless autograd is recording through one of these tensors."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class RMSNorm(nn.Module):
    """``F.normalize`` over channels times ``sqrt(C) * gamma``: Wan's RMS_norm (no bias).

    The norm is reduced in float32 for any input dtype; the output has the input's dtype.
    ``gamma`` keeps the original shape, (C, 1, 1, 1) for videos or (C, 1, 1) for images.
    """

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, T, H, W) -> same shape; ``out``: write the result there (no autograd)."""
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)  # (B, 1, T, H, W)
        inv = (self.scale / norm.clamp_min(NORM_EPS)).to(x.dtype)  # (B, 1, T, H, W)
        gamma = self.gamma.view(-1, 1, 1, 1)  # (C, 1, 1, 1)
        if out is not None:
            return torch.mul(x, inv, out=out).mul_(gamma)
        y = x * inv  # (B, C, T, H, W), RMS sqrt(C)
        return y.mul_(gamma) if _inplace_ok(y, gamma) else y * gamma


class SiLU(nn.Module):
    """SiLU applied in place when safe; only ever fed a fresh tensor (a norm's output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=_inplace_ok(x))


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of a (B, C, T, H, W) video.

    Runs as a Conv3d with a (1, kh, kw) kernel view of the 2D weight, which skips the
    ``(b t) c h w`` reshuffles and is exactly the same arithmetic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, T, H, W) -> (B, C_out, T, H', W')
        return conv3d(x, self.weight.unsqueeze(2), self.bias, (1, *self.stride), (0, *self.padding))


class Upsample2x(nn.Module):
    """Nearest-neighbour doubling of height and width of every frame (exact in any dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")  # (B, C, T, 2H, 2W)


def norm_act_conv(
    norm: RMSNorm,
    act: nn.Module,
    conv: CausalConv3d,
    x: torch.Tensor,
    cache: CausalCache,
    dropout: nn.Module | None = None,
) -> torch.Tensor:
    """``conv(dropout(act(norm(x))), cache)``: x (B, C, T, H, W) -> (B, C_out, T, H, W).

    Outside autograd the activations are written straight into the conv's time-padded input
    buffer (no separate activation tensor, no concatenation): same arithmetic, less memory.
    """
    dropout_active = dropout is not None and dropout.training and dropout.p > 0
    if dropout_active or not _inplace_ok(x, norm.gamma, conv.weight):
        y = act(norm(x))
        return conv(dropout(y) if dropout is not None else y, cache)
    buf, body = conv.padded_input(x, cache)  # (B, C, n + T, H, W), body (B, C, T, H, W)
    if body is x:  # no past frames to add: plain out-of-place norm
        return conv.forward_padded(act(norm(x)), cache)
    act(norm(x, out=body))  # fills body in place
    del x
    return conv.forward_padded(buf, cache)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> causal 3x3x3 conv, twice, plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # a Sequential only to keep the original names: residual.{0,2,3,6}
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        norm1, act1, conv1, norm2, act2, dropout, conv2 = self.residual
        # nested so that conv1's output is referenced by the inner call only, and freed in there
        y = norm_act_conv(norm2, act2, conv2, norm_act_conv(norm1, act1, conv1, x, cache), cache, dropout)
        h = self.shortcut(x)  # (B, C_out, T, H, W), made last so that it is never held over a conv
        return y.add_(h) if _inplace_ok(y, h) else y + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = FrameConv2d(dim, dim * 3, 1)
        self.proj = FrameConv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape  # per frame: attention is local in time, so needs no cache
        qkv = self.to_qkv(self.norm(x))  # (B, 3C, T, H, W)
        q, k, v = rearrange(qkv, "b (three c) t h w -> three (b t) 1 (h w) c", three=3)  # each (BT, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (BT, 1, HW, C)
        y = rearrange(y, "(b t) 1 (h w) c -> b c t h w", b=b, h=h)  # (B, C, T, H, W)
        y = self.proj(y)  # (B, C, T, H, W)
        return y.add_(x) if _inplace_ok(y, x) else y + x


class Resample(nn.Module):
    """Halve or double height and width per frame; the "3d" modes also halve/double time.

    Wan's temporal resampling is causal and treats the first frame apart: downsampling passes it
    through and convolves (kernel 3, stride 2) the frames after it; upsampling keeps it single and
    doubles every later frame with a causal (3, 1, 1) conv to 2C channels. Both keep their state in
    the cache under ``time_conv``.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(Upsample2x(), FrameConv2d(dim, dim // 2, 3, padding=1))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), FrameConv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self.time_conv in cache:
                x = self.time_conv(x, cache)  # (B, 2C, T, H, W)
                x = rearrange(x, "b (two c) t h w -> b c (t two) h w", two=2)  # (B, C, 2T, H, W) view
                x = x.contiguous(memory_format=preferred_format(x))
            else:  # the first frame stays single; the doubled stream begins with the next chunk
                cache.begin(self.time_conv, x)
        x = self.resample(x)  # (B, C', T, 2H, 2W) or (B, C, T, H/2, W/2)
        if self.mode == "downsample3d":
            if self.time_conv in cache:
                x = self.time_conv(x, cache)  # (B, C, T/2, H, W): frames [last of previous chunk, x]
            else:  # the first frame passes through and is remembered for the next chunk
                cache.keep(self.time_conv, x, self.time_conv.context)
        return x


# ------------------------------------------------------------------------------------------------
# Encoder and decoder
# ------------------------------------------------------------------------------------------------
def _middle(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim), ResidualBlock(dim, dim, dropout))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim), SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


class Encoder3d(nn.Module):
    """Video (B, 3, T, H, W) -> (B, 2 z_dim, T', H/8, W/8), one chunk of a stream per call."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv1 = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, config.dropout))
                in_dim = out_dim
            if i < len(config.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if config.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1], config.dropout)
        self.head = _head(dims[-1], 2 * config.z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)  # (B, C0, T, H, W)
        for layer in self.downsamples:
            x = layer(x, cache)  # down to (B, C, T', H/8, W/8)
        res1, attn, res2 = self.middle
        x = res2(attn(res1(x, cache)), cache)  # (B, C, T', H/8, W/8)
        norm, act, conv = self.head
        return norm_act_conv(norm, act, conv, x, cache)  # (B, 2z, T', H/8, W/8)


class Decoder3d(nn.Module):
    """Latents (B, z_dim, T, h, w) -> video (B, 3, T', 8h, 8w), one chunk of a stream per call."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        mult = config.dim_mult
        dims = [config.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = config.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], config.dropout)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsampler halves the channels
            for _ in range(config.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, config.dropout))
                in_dim = out_dim
            if i < len(mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], config.out_channels)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)  # (B, C, T, h, w)
        res1, attn, res2 = self.middle
        x = res2(attn(res1(x, cache)), cache)  # (B, C, T, h, w)
        for layer in self.upsamples:
            x = layer(x, cache)  # up to (B, C0, T', 8h, 8w)
        norm, act, conv = self.head
        return norm_act_conv(norm, act, conv, x, cache)  # (B, 3, T', 8h, 8w)


# ------------------------------------------------------------------------------------------------
# The autoencoder
# ------------------------------------------------------------------------------------------------
@dataclass
class WanPosterior:
    """The encoder's diagonal Gaussian over latents, each (B, z_dim, T', H/8, W/8)."""

    mean: torch.Tensor  # posterior mean: the deterministic latents
    logvar: torch.Tensor  # log-variance, clamped to [LOGVAR_MIN, LOGVAR_MAX] like diffusers and Wan

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely latents (the mean)."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * noise, with noise drawn from ``generator``."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * noise


def encode_moments(vae: nn.Module, video: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """The Wan encoder's moments (B, 2 z_dim, F', h, w) of ``video`` (B, 3, F, H, W) in [-1, 1]:
    frame 1, then ``chunk_size`` frames at a time (default the temporal compression) through the
    causal encoder with a :class:`CausalCache`, then ``conv1``. For :class:`WanVAE` and the codecs
    built on its encoder (the VQ tokenizer); ``vae`` has ``encoder``, ``conv1``, ``config``,
    ``temporal_compression``, ``spatial_compression``, ``device`` and ``dtype``."""
    tc, sc = vae.temporal_compression, vae.spatial_compression
    chunk_size = tc if chunk_size is None else chunk_size
    if chunk_size <= 0 or chunk_size % tc:
        raise KinemaError(f"encode chunk_size must be a positive multiple of {tc}; got {chunk_size}")
    _check_video(video, vae.config.in_channels, tc, sc)
    video = video.to(device=vae.device, dtype=vae.dtype)
    cache = CausalCache()
    out = [vae.encoder(chunk, cache) for chunk in _time_chunks(video, chunk_size)]  # each (B, 2z, t, h, w)
    return vae.conv1(torch.cat(out, dim=2) if len(out) > 1 else out[0])  # (B, 2z, F', h, w)


class WanVAE(CodecProperties, nn.Module):
    """Wan 2.1 causal video VAE: ``encode`` video to latents, ``decode`` latents to video.

    Parameter names are the original Wan names: ``encoder.*``, ``conv1`` (the encoder's 1x1x1 output
    projection to mean and log-variance), ``conv2`` (the decoder's 1x1x1 input projection),
    ``decoder.*``.
    """

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WanVAEConfig()
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)


    # -- encoding -------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor, chunk_size: int | None = None) -> WanPosterior:
        """Encode a video to the posterior over its latents.

        Args:
            video: (B, 3, F, H, W) in [-1, 1], F = 4k + 1, H and W multiples of 8; moved to the
                model's device and dtype.
            chunk_size: pixel frames per step after the first frame, a multiple of 4 (default 4,
                as Wan). Larger chunks use more memory; the result is the same.
        Returns:
            a :class:`WanPosterior` with mean and log-variance (B, z_dim, k + 1, H/8, W/8).
        """
        moments = encode_moments(self, video, chunk_size)  # (B, 2z, F', h, w)
        mean, logvar = moments.contiguous().chunk(2, dim=1)  # each (B, z, F', h, w)
        return WanPosterior(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    # -- decoding -------------------------------------------------------------------------------
    def decode_iter(
        self, latents: torch.Tensor, chunk_size: int = 1, cache: CausalCache | None = None
    ) -> Iterator[torch.Tensor]:
        """Decode chunk by chunk, yielding pixel frames as soon as they are ready.

        Args:
            latents: (B, z_dim, T, h, w) un-normalised latents (see :meth:`denormalize_latents`);
                moved to the model's device and dtype.
            chunk_size: latent frames per step after the first (default 1, as Wan). Larger chunks
                use more memory; the result is the same.
            cache: the causal cache to use (default: a fresh one, i.e. a new video). Passing the
                cache of an earlier call continues that video; it can also be inspected.
        Yields:
            (B, 3, f, 8h, 8w) in [-1, 1] in the model's dtype: f = 1 first, then 4 * chunk_size
            (fewer at the end); T latent frames give 4(T - 1) + 1 frames in all (4T when
            continuing a video).
        """
        if latents.dim() != 5 or latents.shape[1] != self.config.z_dim:
            raise KinemaError(f"latents must be (B, {self.config.z_dim}, T, h, w); got {tuple(latents.shape)}")
        if chunk_size <= 0:
            raise KinemaError(f"decode chunk_size must be positive; got {chunk_size}")
        latents = latents.to(device=self.device, dtype=self.dtype)
        cache = CausalCache() if cache is None else cache
        for z in _time_chunks(latents, chunk_size):
            x = self.decoder(self.conv2(z), cache).contiguous()  # (B, 3, f, 8h, 8w)
            yield x.clamp_(-1.0, 1.0) if _inplace_ok(x) else x.clamp(-1.0, 1.0)

    def decode(self, latents: torch.Tensor, chunk_size: int = 1) -> torch.Tensor:
        """Decode latents (B, z_dim, T, h, w) to a video (B, 3, 4(T-1)+1, 8h, 8w) in [-1, 1].

        Built on :meth:`decode_iter`; the frames are written into one preallocated output.
        """
        chunks = self.decode_iter(latents, chunk_size)
        first = next(chunks)  # (B, 3, 1, 8h, 8w); checks the arguments
        b, _, t, h, w = latents.shape
        tc, sc = self.temporal_compression, self.spatial_compression
        if t == 1:
            return first
        out = first.new_empty(b, first.shape[1], tc * (t - 1) + 1, h * sc, w * sc)  # (B, 3, F, H, W)
        out[:, :, :1] = first
        pos = 1
        for x in chunks:
            out[:, :, pos : pos + x.shape[2]] = x
            pos += x.shape[2]
        return out

    def forward(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruct a video (B, 3, F, H, W): decode the posterior's mean (or a sample of it)."""
        posterior = self.encode(video)
        return self.decode(posterior.sample(generator) if sample else posterior.mode())

    def roundtrip(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> encoded (the posterior's mean) and decoded, float32."""
        return self.decode(self.encode(video).mean).float()

    # -- latent normalisation -------------------------------------------------------------------
    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, dtype=torch.float32, device=z.device).view(shape)
        std = torch.tensor(self.config.latents_std, dtype=torch.float32, device=z.device).view(shape)
        return mean, std

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the diffusion model's space: ``(z - mean) / std`` per channel (float32 math)."""
        mean, std = self._stats(z)
        return ((z.float() - mean) / std).to(z.dtype)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize_latents`: ``z * std + mean`` per channel (float32 math)."""
        mean, std = self._stats(z)
        return (z.float() * std + mean).to(z.dtype)


def _time_chunks(x: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
    """Frame 0 alone, then ``chunk_size`` frames at a time: (B, C, T, H, W) -> views along T."""
    yield x[:, :, :1]
    for start in range(1, x.shape[2], chunk_size):
        yield x[:, :, start : start + chunk_size]


def _check_video(video: torch.Tensor, channels: int, tc: int, sc: int) -> None:
    if video.dim() != 5 or video.shape[1] != channels:
        raise KinemaError(f"video must be (B, {channels}, F, H, W); got {tuple(video.shape)}")
    f, h, w = video.shape[2:]
    if (f - 1) % tc:
        lo = f - (f - 1) % tc
        raise KinemaError(f"num_frames must be {tc}k+1 for this VAE; got {f}, try {lo} or {lo + tc}")
    if h % sc or w % sc:
        raise KinemaError(f"height and width must be multiples of {sc} for this VAE; got {h}x{w}")
