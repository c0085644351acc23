"""Pixel DiT (TTV-1B design) checkpoints: kinema's own format, as a ``pixel-dit`` training run exports it.

A model directory in kinema's layout holds ``transformer/`` (``config.json``: every field of
:class:`~kinema.models.pixel_dit.PixelDiTConfig` with ``_class_name`` ``PixelDiT``, and
``diffusion_pytorch_model*.safetensors``: the denoiser and its text tower under kinema's names) and
``tokenizer/tokenizer.json`` (the byte-level BPE the run trained on its captions). There is no
codec: the model works on pixels.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..models.pixel_dit import PixelDiT, PixelDiTConfig
from ..schema import dataclass_to_dict, read_dataclass
from .io import load_own_format, read_json

CLASS_NAME = "PixelDiT"  # ``_class_name`` of the config.json
WEIGHTS_STEM = "diffusion_pytorch_model"


def from_json(raw: Any) -> PixelDiTConfig:
    """The config from its ``config.json`` form; another ``_class_name``, unknown or missing fields
    and bad values raise :class:`CheckpointError`."""
    return read_dataclass(PixelDiTConfig, raw, what=f"{CLASS_NAME} config", class_name=CLASS_NAME, check_types=False)


def to_json(config: PixelDiTConfig) -> dict[str, Any]:
    """The config.json content (``_class_name`` plus every field)."""
    return dataclass_to_dict(config, CLASS_NAME)


def load_pixel_dit(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device | None = None, config: PixelDiTConfig | None = None
) -> PixelDiT:
    """Load a pixel DiT from a directory (config.json and weights) or a weights file with config.json
    beside it; ``dtype`` casts all but ``PixelDiT._keep_in_fp32``; ``config``, if given, must equal
    the stored one. Returns the model in eval mode."""
    return load_own_format(path, from_json, PixelDiT, config=config, dtype=dtype, device=device, what="pixel DiT", stem=WEIGHTS_STEM)


# ------------------------------------------------------------------------------------------------
# The family's parts (kinema layout: transformer/ + tokenizer/)
# ------------------------------------------------------------------------------------------------
def generator_config(layout: Any) -> PixelDiTConfig:
    """The model's config, from its config.json."""
    return from_json(read_json(layout.components["transformer"] / "config.json"))


def load_generator(layout: Any, dtype: torch.dtype | None = None, device: Any = None, quantize: Any = None) -> PixelDiT:
    """The denoiser with its text tower."""
    return load_pixel_dit(layout.components["transformer"], dtype=dtype, device=device)
