"""``kinema info``: what a preset or a model directory is, without loading its weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..checkpoints.io import build_on_meta
from ..errors import KinemaError
from ..models.ltx import LTXTransformer, LTXTransformerConfig
from ..models.token_ar import TokenAR, TokenARConfig
from ..models.wan import WanTransformer, WanTransformerConfig
from .loading import PRESET_FAMILIES, SHIPPED_MODELS, detect_layout, shipped_model_path

# architecture config -> the denoiser (or token model) it describes
ARCHITECTURES = {WanTransformerConfig: WanTransformer, LTXTransformerConfig: LTXTransformer, TokenARConfig: TokenAR}
PRESETS = {name: factory for family in PRESET_FAMILIES for name, factory in family.presets.items()}


def _model_class(config) -> type:
    return ARCHITECTURES[type(config)]


def _count(config) -> int:
    model_class = _model_class(config)
    return sum(p.numel() for p in build_on_meta(lambda: model_class(config)).parameters())


def _jsonable(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(target: str) -> dict[str, Any]:
    """A JSON-able description: the denoiser's (or token model's) ``parameters``, ``architecture``
    and ``config``, and the model's ``components``."""
    path = Path(target)
    if not path.exists() and target in SHIPPED_MODELS:
        path = shipped_model_path(target)
    if not path.exists():
        if target not in PRESETS:
            raise KinemaError(
                f"{target!r} is neither a path, a shipped model ({', '.join(sorted(SHIPPED_MODELS))}) nor a preset "
                f"({', '.join(sorted(PRESETS))})"
            )
        config = PRESETS[target]()
        return {
            "name": target,
            "kind": "preset",
            "architecture": _model_class(config).__name__,
            "parameters": _count(config),
            "config": _jsonable(config),
            "components": {},
        }
    layout = detect_layout(path)
    config = layout.transformer_config()
    return {
        "name": target,
        "kind": "model",
        "format": layout.format,
        "pipeline": layout.pipeline,
        "architecture": _model_class(config).__name__,
        "parameters": _count(config),
        "config": _jsonable(config),
        "components": {name: {"path": str(p), "bytes": _size(p)} for name, p in layout.components.items()},
    }
