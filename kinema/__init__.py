"""kinema: text (and images, and videos) to video, loading the real checkpoint formats.

    import kinema
    pipe = kinema.load_pipeline("path/to/Wan2.1-T2V-1.3B-Diffusers")
    video = pipe("a red fox running through snow", num_frames=33, seed=0).frames  # uint8 (1, 33, H, W, 3)

    kinema.generate(kinema.GenerationRequest("a red circle moving left", output="out.mp4"))  # what the CLI runs

Names are imported when first used, so ``import kinema`` (and the command line's start) costs
nothing until a model is loaded.
"""

from __future__ import annotations

from typing import Any

from .errors import Cancelled, CheckpointError, KinemaError

__version__ = "0.1.0"
__all__ = [
    "Cancelled",
    "CheckpointError",
    "GenerationRequest",
    "KinemaError",
    "Progress",
    "generate",
    "load_pipeline",
    "__version__",
]

_LAZY = {
    "load_pipeline": "kinema.pipelines.loading:load_pipeline",
    "GenerationRequest": "kinema.request:GenerationRequest",
    "Progress": "kinema.pipelines.base:Progress",
    "generate": "kinema.generation:generate",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kinema' has no attribute {name!r}")
    import importlib

    module, _, attribute = _LAZY[name].partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
