"""Training: one loop for the Wan VAE, the Wan transformer, the VQ tokenizer and the token model, with exact resume.

``kinema train CONFIG.yaml [--resume] [--steps N]`` (kinema/cli.py) and Python code call
:func:`train`.
"""

from __future__ import annotations

from .config import DataConfig, ObjectiveConfig, OptimConfig, TrainConfig, load_config
from .ema import EMA
from .loop import train

__all__ = ["DataConfig", "EMA", "ObjectiveConfig", "OptimConfig", "TrainConfig", "load_config", "train"]
