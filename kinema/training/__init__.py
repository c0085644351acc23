"""Training: one loop for every kind of model (the Wan VAE, the Wan transformer, the VQ tokenizer
and the token model), with exact resume, on the CPU or a CUDA device.

``kinema train CONFIG.yaml [--resume] [--steps N] [--device D]`` (kinema/cli.py) and Python code
call :func:`train`. The loop is :mod:`.loop`; the kinds of model :mod:`.kinds`; their objectives
:mod:`.objectives`; checkpoints, resume and export :mod:`.checkpointing`; the config :mod:`.config`.
"""

from __future__ import annotations

from .config import DataConfig, OptimConfig, TrainConfig, load_config
from .ema import EMA
from .loop import train

__all__ = ["DataConfig", "EMA", "OptimConfig", "TrainConfig", "load_config", "train"]
