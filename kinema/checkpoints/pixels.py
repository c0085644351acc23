"""The codec of pixel-space models: none. A pixel-dit model directory has no codec folder; these are
the two functions every codec's checkpoints module offers (:class:`kinema.families.CodecKind`)."""

from __future__ import annotations

from typing import Any

from ..models.codec import PixelCodec, PixelCodecConfig


def codec_config(path: Any = None) -> PixelCodecConfig:
    """No compression: 1 x 1 x 1, three channels."""
    return PixelCodecConfig()


def load_codec(path: Any = None, dtype: Any = None, device: Any = None) -> PixelCodec:
    """The identity codec (nothing to read)."""
    return PixelCodec(dtype=dtype, device=device)
