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


def rescale_guidance(guided: Tensor, cond: Tensor, rescale: float) -> Tensor:
    """Pull the guided prediction's per-sample standard deviation back towards the conditional
    one's (Lin et al. 2023, section 3.4; diffusers' ``rescale_noise_cfg``): ``rescale`` 0 returns
    ``guided`` itself, 1 matches the std fully. Shapes (B, ...)."""
    if rescale == 0:
        return guided
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * guided
