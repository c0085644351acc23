"""The LTX-Video video autoencoder: 128 latent channels, 32 x 32 x 8 compression, pixel (RMS) norms.

Architecture and parameter names are those of the original release (Lightricks/LTX-Video,
``ltx_video/models/autoencoders/causal_video_autoencoder.py``, ``CausalVideoAutoencoder``): the
encoder and the decoder are flat lists of blocks (``down_blocks.{i}``, ``up_blocks.{i}``), so the
original single-file checkpoints load with a near-identity key map
(:data:`kinema.checkpoints.ltx_vae.ORIGINAL_KEYS`); diffusers' ``AutoencoderKLLTXVideo``
layout loads through :func:`kinema.checkpoints.ltx_vae.diffusers_keys`. The config speaks
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

from typing import Iterator, Sequence

import torch
from torch import nn

from ...errors import KinemaError
from ...runtime import cap_heap_growth
from ...sampling.noise import FlowMatching
from ..codec import CodecProperties
from .causal import CausalCache
from .ltx_vae_blocks import Conditioning, Decoder, Encoder, flush_groups, _randn
from .ltx_vae_config import (  # noqa: F401  (the config's names, re-exported with the model)
    DOWN_BLOCK,
    DOWN_BLOCK_095,
    LTX_VAE_PRESETS,
    BlockKind,
    BlockSpec,
    LTXVAEConfig,
    ltx_vae_preset,
)
from .wan_vae import LOGVAR_MAX, LOGVAR_MIN, WanPosterior, _check_video

# LTX-Video's recommended decode settings for the timestep-conditioned decoder (0.9.1+; inference.py).
DEFAULT_DECODE_TIMESTEP = 0.05
DEFAULT_DECODE_NOISE_SCALE = 0.025
DEFAULT_DECODE_CHUNK = 4  # latent frames per decoding step (32 pixel frames): bounds the decoder's memory


# ------------------------------------------------------------------------------------------------
# The autoencoder
# ------------------------------------------------------------------------------------------------
class LTXVAE(CodecProperties, nn.Module):
    """The LTX-Video causal video VAE: ``encode`` video to latents, ``decode`` latents to video.

    Parameters and buffers carry the original names: ``encoder.*``, ``decoder.*`` and the latent
    statistics ``latents_mean`` / ``latents_std`` (the original's ``per_channel_statistics``).
    """

    _keep_in_fp32 = ("latents_mean", "latents_std")
    _anchor = "decoder.conv_in.conv"  # dtype and device (CodecProperties)

    def __init__(self, config: LTXVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LTXVAEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latents_mean", torch.zeros(config.latent_channels))
        self.register_buffer("latents_std", torch.ones(config.latent_channels))

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
        z, cond = self.prepare_decode(latents, timestep, decode_noise_scale, generator)
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
        for stop in flush_groups([s.lag for s in steps], chunk_size):  # then announce the end, a group at a time
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

    def roundtrip(self, video: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> encoded (the posterior's mean) and decoded at decode
        timestep 0 with no noise blended in, float32. A decoder that injects noise (0.9.1) draws it
        from a generator seeded with ``seed``: the same clip always comes back the same."""
        generator = torch.Generator(self.device).manual_seed(seed)
        return self.decode(self.encode(video).mean, generator=generator).float()

    def prepare_decode(self, latents, timestep, decode_noise_scale, generator) -> tuple[torch.Tensor, Conditioning]:
        """The checked latents (B, C, T, h, w), with decode noise blended in when the VAE draws it,
        and the decoder's conditioning: what :meth:`decode_iter` feeds its chain (and what a split
        decode, :func:`kinema.parallel.vae.decode_split`, feeds each share)."""
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
                z = FlowMatching().add_noise(z, noise, s)  # the latents taken to noise level s
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
