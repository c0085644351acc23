"""kinema: text (and images, and videos) to video, loading the real checkpoint formats.

    import kinema
    pipe = kinema.load_pipeline("path/to/Wan2.1-T2V-1.3B-Diffusers")
    video = pipe("a red fox running through snow", num_frames=33, seed=0).frames  # uint8 (1, 33, H, W, 3)
"""

from .errors import CheckpointError, KinemaError
from .pipelines.loading import load_pipeline

__version__ = "0.1.0"
__all__ = ["CheckpointError", "KinemaError", "load_pipeline", "__version__"]
