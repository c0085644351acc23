"""``kinema info``: what a preset or a model directory is, without loading its weights, or what a
video kinema wrote was made from (its metadata, :mod:`kinema.replay`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints.io import build_on_meta
from ..checkpoints.layouts import SHIPPED_MODELS, detect_layout, shipped_model_path
from ..errors import KinemaError
from ..families import Family, presets
from ..schema import dataclass_to_dict
from ..video import CONTAINER_FORMATS


def _count(family: Family, config: Any) -> int:
    model_class = family.model_class()
    return sum(p.numel() for p in build_on_meta(lambda: model_class(config)).parameters())


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(target: str) -> dict[str, Any]:
    """A JSON-able description: the denoiser's (or token model's) ``parameters``, ``architecture``
    and ``config``, and the model's ``components``; for a video file (.mp4, .mkv, .mov) the
    metadata kinema wrote into it (:func:`kinema.replay.read_metadata`)."""
    if not isinstance(target, str) or not target:
        raise KinemaError(f"give a preset, a shipped model's name, a model directory or a video; got {target!r}")
    path = Path(target)
    if path.suffix.lower() in CONTAINER_FORMATS and not path.is_dir():
        from ..replay import read_metadata

        return read_metadata(path)
    if not path.exists() and target in SHIPPED_MODELS:
        path = shipped_model_path(target)
    if not path.exists():
        known = presets()
        if target not in known:
            raise KinemaError(
                f"{target!r} is neither a path, a shipped model ({', '.join(sorted(SHIPPED_MODELS))}) nor a preset "
                f"({', '.join(sorted(known))})"
            )
        family, factory = known[target]
        config = factory()
        return {
            "name": target,
            "kind": "preset",
            "pipeline": family.name,
            "architecture": family.model_class().__name__,
            "parameters": _count(family, config),
            "config": dataclass_to_dict(config),
            "components": {},
        }
    layout = detect_layout(path)
    config = layout.transformer_config()
    return {
        "name": target,
        "kind": "model",
        "format": layout.format,
        "pipeline": layout.pipeline,
        "architecture": layout.family.model_class().__name__,
        "parameters": _count(layout.family, config),
        "config": dataclass_to_dict(config),
        "components": {name: {"path": str(p), "bytes": _size(p)} for name, p in layout.components.items()},
    }
