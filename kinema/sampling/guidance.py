"""Classifier-free guidance, kept outside the model: a pure function of two predictions."""

from __future__ import annotations

from torch import Tensor


def cfg(uncond: Tensor, cond: Tensor, guidance_scale: float) -> Tensor:
    """``uncond + g * (cond - uncond)``: the prediction pushed away from the unconditional one.

    Args:
        uncond: prediction without the prompt (or with the negative prompt), any shape.
        cond: prediction with the prompt, same shape.
        guidance_scale: ``g``; 1 means no guidance and returns ``cond`` itself (bit for bit,
            which the formula would not guarantee in floating point), 0 returns ``uncond``.
    """
    if guidance_scale == 1:
        return cond
    return uncond + guidance_scale * (cond - uncond)
