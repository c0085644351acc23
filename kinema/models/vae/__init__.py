"""Video autoencoders: a causal 3D conv with an explicit cache, and each autoencoder built on it."""

from .causal import CausalCache, CausalConv3d
from .vq_video import VQVideoConfig, VQVideoTokenizer
from .wan_vae import WanPosterior, WanVAE, WanVAEConfig

__all__ = [
    "CausalCache",
    "CausalConv3d",
    "VQVideoConfig",
    "VQVideoTokenizer",
    "WanPosterior",
    "WanVAE",
    "WanVAEConfig",
]
