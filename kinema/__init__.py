"""kinema: text (and images, and videos) to video, loading the real checkpoint formats."""

__version__ = "0.1.0"
