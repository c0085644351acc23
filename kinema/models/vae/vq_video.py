"""The VQ video tokenizer of kinema's autoregressive models: Wan's causal 3D autoencoder with a
codebook between encoder and decoder, so every latent frame is a grid of discrete tokens.

::

    video (B, 3, F, H, W) -> encoder -> conv1 (mean half) -> quant_proj -> quantizer -> tokens (B, F', h, w)
    tokens -> codebook lookup -> post_quant_proj -> conv2 -> decoder -> video (B, 3, F, H, W)

``encoder``, ``conv1``, ``conv2`` and ``decoder`` are the modules of
:class:`~kinema.models.vae.wan_vae.WanVAE`, with its parameter names and shapes, so a trained Wan
VAE's weights can start a tokenizer (``init_from`` in a ``vq-tokenizer`` training config);
``quant_proj``, ``quantizer`` and ``post_quant_proj`` are the tokenizer's own. ``conv1`` keeps
the VAE's 2 z_dim outputs; the tokenizer reads the first z_dim (the VAE's posterior mean) and
leaves the log-variance half unused. Time and space compress as the Wan config says
(``temporal_downsample`` all False: one token grid per frame).

An exported tokenizer is a directory: ``config.json`` (:meth:`VQVideoConfig.to_dict`, with
``_class_name`` ``VQVideoTokenizer``) and ``diffusion_pytorch_model.safetensors`` (kinema's own
names), read by :func:`load_vq_tokenizer`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import KinemaError
from ...schema import (
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    UNIT_BELOW_ONE,
    bool_tuple,
    check_bools,
    check_ints,
    check_numbers,
    int_tuple,
)
from ..codec import CodecProperties
from ..vq import VectorQuantizer
from .causal import CausalCache, CausalConv3d
from .wan_vae import (
    Decoder3d,
    Encoder3d,
    WanVAEConfig,
    _check_video,
    _time_chunks,
    encode_moments,
)


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------
@dataclass
class VQVideoConfig:
    """A Wan 2.1 autoencoder structure (fields named as :class:`WanVAEConfig`'s) plus a codebook."""

    base_dim: int = WanVAEConfig.base_dim  # channels of the first encoder stage (and of the last decoder stage)
    z_dim: int = WanVAEConfig.z_dim  # channels between encoder and decoder (the Wan VAE's latent width)
    dim_mult: tuple[int, ...] = WanVAEConfig.dim_mult  # channel multiplier of each stage
    num_res_blocks: int = WanVAEConfig.num_res_blocks  # residual blocks per encoder stage (the decoder has one more)
    temporal_downsample: tuple[bool, ...] = WanVAEConfig.temporal_downsample  # time halved after stage i? all False: tokens per frame
    dropout: float = WanVAEConfig.dropout  # dropout inside residual blocks (training only)
    in_channels: int = WanVAEConfig.in_channels  # video channels into the encoder
    out_channels: int = WanVAEConfig.out_channels  # video channels out of the decoder
    codebook_size: int = 1024  # K: token ids 0 .. K-1
    codebook_dim: int = 8  # width of a code; quant_proj maps z_dim to it, post_quant_proj back
    beta: float = 0.25  # commitment loss weight (VQ-VAE)
    codebook_ema: bool = True  # keep the codebook by EMA of assigned vectors (else train it by the codebook loss)
    codebook_decay: float = 0.99  # EMA decay of code counts and sums
    codebook_eps: float = 1e-5  # Laplace smoothing of the EMA counts
    restart_after: int = 100  # re-seed a code unused for this many optimiser steps (0: never)

    def __post_init__(self) -> None:
        owner = "VQ tokenizer"
        self.dim_mult = int_tuple(owner, "dim_mult", self.dim_mult)
        self.temporal_downsample = bool_tuple(owner, "temporal_downsample", self.temporal_downsample)
        check_ints(owner, self, ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels", "codebook_dim"))
        check_ints(owner, self, ("codebook_size",), minimum=2)
        check_ints(owner, self, ("restart_after",), minimum=0)  # 0 disables restarts
        check_numbers(owner, self, {"dropout": UNIT_BELOW_ONE, "beta": NON_NEGATIVE, "codebook_decay": OPEN_UNIT, "codebook_eps": POSITIVE})
        check_bools(owner, self, ("codebook_ema",))
        _ = self.autoencoder  # checks the Wan fields (one temporal_downsample flag per downsampling stage)

    @property
    def autoencoder(self) -> WanVAEConfig:
        """The Wan VAE config of the encoder and decoder (latent statistics unused: 0 and 1)."""
        shared = {f.name for f in dataclasses.fields(WanVAEConfig)} & {f.name for f in dataclasses.fields(self)}
        return WanVAEConfig(
            **{name: getattr(self, name) for name in shared},
            latents_mean=(0.0,) * self.z_dim,
            latents_std=(1.0,) * self.z_dim,
        )

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per token grid (after the first frame): the Wan encoder's."""
        return self.autoencoder.temporal_compression

    @property
    def spatial_compression(self) -> int:
        """Pixels per token along height and width: the Wan encoder's."""
        return self.autoencoder.spatial_compression


# ------------------------------------------------------------------------------------------------
# The tokenizer
# ------------------------------------------------------------------------------------------------
class VQVideoTokenizer(CodecProperties, nn.Module):
    """Video <-> token grids: ``encode_tokens`` (B, 3, F, H, W) -> (B, F', h, w), ``decode_tokens`` back.

    F' = (F - 1) / temporal_compression + 1, h = H / spatial_compression, w likewise.
    """

    _keep_in_fp32 = ("quantizer",)  # codes and their statistics stay float32 in any dtype
    _ema_copy = ("quantizer",)  # a training EMA of the weights copies the codebook (already a moving average)

    def __init__(self, config: VQVideoConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VQVideoConfig()
        ae = config.autoencoder
        self.encoder = Encoder3d(ae)
        self.conv1 = CausalConv3d(2 * ae.z_dim, 2 * ae.z_dim, 1)  # as WanVAE's: the first z_dim outputs are used
        self.quant_proj = CausalConv3d(ae.z_dim, config.codebook_dim, 1)
        self.quantizer = VectorQuantizer(
            config.codebook_size,
            config.codebook_dim,
            beta=config.beta,
            ema=config.codebook_ema,
            decay=config.codebook_decay,
            eps=config.codebook_eps,
            restart_after=config.restart_after,
        )
        self.post_quant_proj = CausalConv3d(config.codebook_dim, ae.z_dim, 1)
        self.conv2 = CausalConv3d(ae.z_dim, ae.z_dim, 1)  # as WanVAE's
        self.decoder = Decoder3d(ae)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The token grid (F', h, w) of a video of this size; sizes the tokenizer cannot take raise."""
        tc, sc = self.temporal_compression, self.spatial_compression
        _check_video(torch.empty(1, self.config.in_channels, num_frames, height, width, device="meta"), self.config.in_channels, tc, sc)
        return (num_frames - 1) // tc + 1, height // sc, width // sc

    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens in one latent frame's grid: (height / s) * (width / s)."""
        _, h, w = self.grid(1, height, width)
        return h * w

    # -- encoding -------------------------------------------------------------------------------
    def encode_features(self, video: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """The quantiser's input: video (B, 3, F, H, W) in [-1, 1] -> (B, codebook_dim, F', h, w).

        The encoder runs chunk by chunk in time (frame 1, then ``chunk_size`` frames, default the
        temporal compression) with a :class:`CausalCache`, as :meth:`WanVAE.encode`.
        """
        moments = encode_moments(self, video, chunk_size)  # (B, 2z, F', h, w)
        mean = moments[:, : self.config.z_dim]  # (B, z, F', h, w): the VAE's posterior mean
        return self.quant_proj(mean)  # (B, codebook_dim, F', h, w)

    def encode_tokens(self, video: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1], F = tk + 1 -> token ids (B, F', h, w) int64 in [0, K)."""
        return self.quantizer.encode(self.encode_features(video, chunk_size))

    # -- decoding -------------------------------------------------------------------------------
    def decode_features(self, z_q: torch.Tensor, chunk_size: int = 1) -> torch.Tensor:
        """Quantised codes (B, codebook_dim, F', h, w) -> video (B, 3, t(F' - 1) + 1, sh, sw) in [-1, 1].

        The decoder runs ``chunk_size`` latent frames at a time after the first, with a
        :class:`CausalCache`, as :meth:`WanVAE.decode`.
        """
        if z_q.dim() != 5 or z_q.shape[1] != self.config.codebook_dim:
            raise KinemaError(f"codes must be (B, {self.config.codebook_dim}, F', h, w); got {tuple(z_q.shape)}")
        if chunk_size <= 0:
            raise KinemaError(f"decode chunk_size must be positive; got {chunk_size}")
        z = self.conv2(self.post_quant_proj(z_q.to(device=self.device, dtype=self.dtype)))  # (B, z, F', h, w)
        cache = CausalCache()
        out = [self.decoder(chunk, cache) for chunk in _time_chunks(z, chunk_size)]  # each (B, 3, f, H, W)
        return (torch.cat(out, dim=2) if len(out) > 1 else out[0]).clamp(-1.0, 1.0)  # (B, 3, F, H, W)

    def decode_tokens(self, tokens: torch.Tensor, chunk_size: int = 1) -> torch.Tensor:
        """Token ids (B, F', h, w) -> video (B, 3, t(F' - 1) + 1, sh, sw) in [-1, 1], in the model's dtype."""
        if tokens.dim() != 4:
            raise KinemaError(f"tokens must be (B, F', h, w); got {tuple(tokens.shape)}")
        return self.decode_features(self.quantizer.lookup(tokens.to(self.quantizer.codebook.device)), chunk_size)

    # -- the VideoCodec protocol: the tokens are its latents ------------------------------------------
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, F, H, W) -> token ids (B, F', h, w): :meth:`encode_tokens`."""
        return self.encode_tokens(video)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B, F', h, w) -> video (B, 3, F, H, W): :meth:`decode_tokens`."""
        return self.decode_tokens(tokens)

    def roundtrip(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, F, H, W) in [-1, 1] -> tokens -> video, float32."""
        return self.decode_tokens(self.encode_tokens(video)).float()

    # -- training -------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct video (B, 3, F, H, W) through the codebook.

        Returns:
            the reconstruction (B, 3, F, H, W) in [-1, 1], and the quantiser's info
            (:meth:`VectorQuantizer.forward`: ``loss`` to add to the training loss,
            ``commitment``, ``codebook``, ``perplexity``, ``usage``, and ``assignments`` for
            :meth:`VectorQuantizer.update_codebook`) plus ``tokens`` (B, F', h, w).
        """
        z_q, tokens, info = self.quantizer(self.encode_features(video))  # (B, D, F', h, w), (B, F', h, w)
        return self.decode_features(z_q), {**info, "tokens": tokens}
