"""``kinema info``: what a preset or a model directory is, without loading its weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..checkpoints.io import build_on_meta
from ..errors import KinemaError
from ..models.wan import WAN_PRESETS, WanTransformer
from .loading import SHIPPED_MODELS, detect_layout, shipped_model_path


def _count(config) -> int:
    return sum(p.numel() for p in build_on_meta(lambda: WanTransformer(config)).parameters())


def _jsonable(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(target: str) -> dict[str, Any]:
    """A JSON-able description: denoiser ``parameters``, ``architecture`` and ``components``."""
    path = Path(target)
    if not path.exists() and target in SHIPPED_MODELS:
        path = shipped_model_path(target)
    if not path.exists():
        if target not in WAN_PRESETS:
            raise KinemaError(
                f"{target!r} is neither a path, a shipped model ({', '.join(sorted(SHIPPED_MODELS))}) nor a preset "
                f"({', '.join(sorted(WAN_PRESETS))})"
            )
        config = WAN_PRESETS[target]()
        return {
            "name": target,
            "kind": "preset",
            "architecture": "WanTransformer",
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
        "architecture": "WanTransformer",
        "parameters": _count(config),
        "config": _jsonable(config),
        "components": {name: {"path": str(p), "bytes": _size(p)} for name, p in layout.components.items()},
    }
