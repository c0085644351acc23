"""Pieces every diffusion pipeline shares: argument checks, prompts, seeds and initial noise."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import KinemaError


def check_frames(num_frames: int, temporal_factor: int) -> None:
    """Causal video VAEs take ``temporal_factor * k + 1`` frames."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal_factor:
        lo = max(1, (max(int(num_frames), 1) - 1) // temporal_factor * temporal_factor + 1)
        raise KinemaError(
            f"num_frames must be {temporal_factor}k+1 for this VAE (1, {temporal_factor + 1}, "
            f"{2 * temporal_factor + 1}, ...); got {num_frames}, try {lo} or {lo + temporal_factor}"
        )


def check_size(height: int, width: int, multiple: int) -> None:
    """Height and width must be positive multiples of the VAE stride times the patch size."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            lo = max(multiple, int(v) // multiple * multiple) if isinstance(v, int) else multiple
            raise KinemaError(f"{name} must be a positive multiple of {multiple} for this model; got {v}, try {lo} or {lo + multiple}")


def check_steps(num_inference_steps: int) -> None:
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise KinemaError(f"num_inference_steps must be a positive integer; got {num_inference_steps}")


def as_prompt_list(prompt: str | Sequence[str] | None, name: str = "prompt") -> list[str] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and all(isinstance(p, str) for p in prompt) and len(prompt) > 0:
        return list(prompt)
    raise KinemaError(f"{name} must be a string or a non-empty list of strings; got {type(prompt).__name__}")


def make_generators(
    generator: torch.Generator | list[torch.Generator] | None, seed: int | None, batch: int
) -> torch.Generator | list[torch.Generator] | None:
    """Resolve ``generator=`` / ``seed=`` (diffusers takes the first, Wan's scripts the second)."""
    if generator is not None and seed is not None:
        raise KinemaError("pass either generator= or seed=, not both")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise KinemaError(f"seed must be an integer; got {seed!r}")
        return torch.Generator("cpu").manual_seed(seed)
    if isinstance(generator, list) and len(generator) != batch:
        raise KinemaError(f"got {len(generator)} generators for a batch of {batch} videos; pass one per video")
    return generator


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """Standard normal float32 noise, drawn on the generator's device (per sample for a list).

    This is diffusers' ``randn_tensor`` rule, so the same generator gives the same noise in both.
    """
    if isinstance(generator, list):
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.cat(parts).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def check_latents(latents: torch.Tensor, expected: tuple[int, ...]) -> None:
    if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(expected):
        got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise KinemaError(f"latents must have shape (batch, channels, frames, height, width) = {tuple(expected)}; got {got}")
