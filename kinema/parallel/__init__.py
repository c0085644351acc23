"""Running one request or one training run over several processes (torchrun), with the parallel
plan applied from outside the single-device model code.

Sampling: :class:`ParallelPlan` (sequence and guidance degrees) and :func:`parallelize` (a
denoiser or a pipeline), with the distributed self-attention of :mod:`kinema.parallel.attention`.
Process groups: :mod:`kinema.parallel.groups`.
"""

from .plan import Parallelized, ParallelPlan, parallelize

__all__ = ["ParallelPlan", "Parallelized", "parallelize"]
