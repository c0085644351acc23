"""Image encoders: pictures -> token features for image-to-video (CLIP vision towers, for Wan 2.1)."""

from .clip import CLIPImageEncoder

__all__ = ["CLIPImageEncoder"]
