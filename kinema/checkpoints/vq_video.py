"""VQ video tokenizer checkpoints: kinema's own format, as a ``vq-tokenizer`` training run exports it.

A tokenizer directory holds ``config.json`` (every field of
:class:`~kinema.models.vae.vq_video.VQVideoConfig`, with ``_class_name`` ``VQVideoTokenizer``) and
``diffusion_pytorch_model.safetensors`` under kinema's own parameter names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..models.vae.vq_video import VQVideoConfig, VQVideoTokenizer
from ..schema import dataclass_to_dict, read_dataclass
from .io import (
    build_on_meta,
    config_class_name,
    load_into,
    load_safetensors,
    read_json,
    resolve_config,
    save_safetensors,
)

CLASS_NAME = "VQVideoTokenizer"  # config.json's _class_name
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # the weights beside config.json (as every kinema export)


def from_json(raw: Any) -> VQVideoConfig:
    """The config from its ``config.json`` form; another class, an unknown field or a bad value
    raise a one-line :class:`CheckpointError`."""
    return read_dataclass(VQVideoConfig, raw, what=f"{CLASS_NAME} config", class_name=CLASS_NAME, check_types=False)


def to_json(config: VQVideoConfig) -> dict[str, Any]:
    """``config.json`` content: ``_class_name`` and every field (tuples as lists)."""
    return dataclass_to_dict(config, CLASS_NAME)


def is_config(raw: Any) -> bool:
    """Whether a config.json mapping names a VQ video tokenizer."""
    return isinstance(raw, Mapping) and raw.get("_class_name") == CLASS_NAME


def is_vq_tokenizer_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose config.json names a VQVideoTokenizer."""
    return config_class_name(path) == CLASS_NAME


def save_vq_tokenizer(directory: str | os.PathLike, config: VQVideoConfig, state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and the weights (a :class:`VQVideoTokenizer` state dict) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, directory / WEIGHTS_FILE)
    (directory / "config.json").write_text(json.dumps(to_json(config), indent=2))
    return directory


def load_vq_tokenizer(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    config: VQVideoConfig | None = None,
) -> VQVideoTokenizer:
    """Load a tokenizer directory (``config.json`` + ``diffusion_pytorch_model.safetensors``, as a
    ``vq-tokenizer`` training run exports to ``OUT/model``), built on the meta device and filled
    strictly. ``dtype`` casts the weights except the quantiser's (float32). Eval mode, no gradients.
    ``config``, if given, must equal the stored one (:func:`~kinema.checkpoints.io.resolve_config`).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"VQ tokenizer not found: {path}; give a directory with config.json and {WEIGHTS_FILE}")
    config = resolve_config(from_json(read_json(path / "config.json")), config, None, where=path / "config.json", what="VQ tokenizer")
    model = build_on_meta(lambda: VQVideoTokenizer(config))
    load_into(model, load_safetensors(path / WEIGHTS_FILE), dtype=dtype, device=device, what="VQ video tokenizer")
    return model.eval().requires_grad_(False)


def codec_config(path: str | os.PathLike) -> VQVideoConfig:
    """The tokenizer's config, from its config.json."""
    return from_json(read_json(Path(path) / "config.json"))


load_codec = load_vq_tokenizer
