"""What a video codec offers pipelines and training: the :class:`VideoCodec` protocol.

A codec maps pixel video (B, 3, F, H, W) in [-1, 1] to a compressed form and back: a VAE to
latents (``encode`` gives the posterior, ``decode`` takes latents), a VQ tokenizer to grids of
token ids. Frames are ``temporal_compression * k + 1`` (the first frame alone, then groups), sizes
multiples of ``spatial_compression``. ``roundtrip`` is encode then decode with no sampling: what
the codec keeps of a real clip (``kinema eval --reconstruct``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class VideoCodec(Protocol):
    """A VAE or a VQ tokenizer, as pipelines and training use it."""

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def temporal_compression(self) -> int: ...  # pixel frames per latent frame after the first

    @property
    def spatial_compression(self) -> int: ...  # pixels per latent along height and width

    def encode(self, video: torch.Tensor) -> Any: ...  # (B, 3, F, H, W) -> a posterior or token ids

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...  # -> (B, 3, F, H, W) in [-1, 1]

    def roundtrip(self, video: torch.Tensor) -> torch.Tensor: ...  # (B, 3, F, H, W) -> the same, float32


class CodecProperties:
    """The properties of :class:`VideoCodec` that every codec module derives alike: dtype and device
    of one of its weights (``_anchor``, a submodule path), compressions of its ``config``."""

    _anchor: str = "conv2"  # a module whose weight's dtype and device are the codec's

    @property
    def dtype(self) -> torch.dtype:
        return self.get_submodule(self._anchor).weight.dtype  # type: ignore[attr-defined]

    @property
    def device(self) -> torch.device:
        return self.get_submodule(self._anchor).weight.device  # type: ignore[attr-defined]

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression  # type: ignore[attr-defined]

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression  # type: ignore[attr-defined]

    def latent_frames(self, frames: int) -> int:
        """How many latent frames hold the first ``frames`` pixel frames (the first frame alone,
        then ``temporal_compression`` a latent frame): for a clip of 4k+1 frames, its latent length."""
        return (frames - 1) // self.temporal_compression + 1


class PixelCodecConfig:
    """What a model that works on pixels has in place of a codec: no compression at all."""

    temporal_compression = 1
    spatial_compression = 1
    channels = 3


class PixelCodec(torch.nn.Module):
    """The identity codec of pixel-space models (TTV-1B): video in [-1, 1] is its own "latent", and
    decoding clamps to [-1, 1]. It holds no weights and keeps the pipelines' codec seam uniform."""

    config = PixelCodecConfig()

    def __init__(self, dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        self._dtype, self._device = dtype or torch.float32, torch.device(device or "cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def temporal_compression(self) -> int:
        return 1

    @property
    def spatial_compression(self) -> int:
        return 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(-1.0, 1.0)

    def roundtrip(self, video: torch.Tensor) -> torch.Tensor:
        return video.float()
