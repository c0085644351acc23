"""What every pipeline returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class VideoOutput:
    """The result of a pipeline call.

    Attributes:
        frames: uint8 video of shape (batch, frames, height, width, 3) as a numpy array
            (``output_type="np"``) or a torch tensor (``output_type="pt"``); None for
            ``output_type="latent"``.
        latents: the final latent video, unpacked: (batch, channels, frames, height, width), in the
            model's sampling space (what ``latents=`` accepts as input); for a token model
            (``token-ar``) its token ids, (batch, frames', h, w) int64.
        fps: frames per second the model was trained at (what ``kinema generate`` writes).
        timings: seconds spent per stage of the call: "text" (prompt encoding), "denoise"
            (diffusion sampling) or "tokens" (token generation), and "decode" (VAE or VQ
            tokenizer), for ``kinema generate --timings`` and benchmarks.
        cache: with step caching (``cache_threshold=``), the model calls of the sampling loop
            ("calls") and those that ran only the first block ("skipped"); None without.
        past: from ``extend``, the window's own decode of the input's last ``overlap`` frames
            (batch, overlap, height, width, 3) uint8, as ``frames``: what a long video fades its
            frames before a join into (the output keeps the input's frames as they were); else None.
    """

    frames: np.ndarray | torch.Tensor | None
    latents: torch.Tensor
    fps: float
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] | None = None
    past: np.ndarray | torch.Tensor | None = None  # extend: the new window's own decode of the past it was given
