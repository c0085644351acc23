"""Data sets: the procedural shapes world, folders of captioned videos, tiny synthetic clips for
tests, and the latent and token caches of a training run; :func:`make_dataset` builds the one a
training config names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .shapes import (
    ALL_COMBOS,
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    HELD_OUT_COMBOS,
    MOTIONS,
    PALETTE,
    SHAPES,
    TRAIN_COMBOS,
    ClipSpec,
    ShapesDataset,
    ShapeSpec,
    canonical_caption,
    caption,
    render_clip,
    reworded_caption,
    sample_spec,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "make_dataset",
    "ALL_COMBOS",
    "BACKGROUND",
    "COLOURS",
    "HELD_OUT",
    "HELD_OUT_COMBOS",
    "MOTIONS",
    "PALETTE",
    "SHAPES",
    "TRAIN_COMBOS",
    "ClipSpec",
    "ShapeSpec",
    "ShapesDataset",
    "canonical_caption",
    "caption",
    "render_clip",
    "reworded_caption",
    "sample_spec",
]


def make_dataset(data) -> "torch.utils.data.Dataset":
    """The clip data set a training config's ``data`` names (items: ``video`` (3, F, H, W) in
    [-1, 1] and ``caption``): ``shapes``, ``video_folder`` or ``synthetic``."""
    if data.kind == "synthetic":
        from .synthetic import SyntheticClips

        return SyntheticClips(size=data.size, frames=data.frames, seed=data.seed, length=data.length)
    if data.kind == "shapes":
        return ShapesDataset(split=data.split, size=data.size, frames=data.frames, seed=data.seed, length=data.length, wording=data.wording, continue_share=data.continue_share, continue_past=tuple(data.continue_past), clip_frames=data.clip_frames)
    from .video_folder import VideoFolderDataset

    return VideoFolderDataset(data.path, data.captions, size=data.size, frames=data.frames)
