"""Noise processes: how clean data and noise mix, what a denoiser predicts, and what it is told.

One object per kind of process owns every formula that depends on it, so the training objective,
the samplers, image-to-video and video-to-video starts and LTX-Video's conditioning ask it instead of
writing ``(1 - sigma) * x0 + sigma * noise`` again:

- :meth:`~NoiseProcess.add_noise`: the noisy sample ``x_t`` at level ``t`` (training inputs, the start
  of a partial denoise);
- :meth:`~NoiseProcess.target`: what the model is trained to predict there;
- :meth:`~NoiseProcess.model_timestep`: the value the denoiser is conditioned on at level ``t``;
- :meth:`~NoiseProcess.predict_x0`: the clean-sample estimate from the model's output;
- :meth:`~NoiseProcess.alpha_sigma`: the signal and noise scales ``x_t = alpha x0 + sigma noise``
  (what multistep solvers such as UniPC integrate over);
- :meth:`~NoiseProcess.training_levels`: levels drawn for training, one per item;
- :attr:`~NoiseProcess.clean_level`: the level of a clean sample (image-to-video's first frame).

A level ``t`` is in the process's own units: flow matching's sigma in [0, 1]; a DDPM's integer
timestep in [0, N). Levels broadcast as (B,) over a (B, ...) sample, or a scalar.

:class:`FlowMatching` (Wan 2.1, LTX-Video) is bit-for-bit what kinema computed before this seam
existed; :class:`DDPM` is the classic discrete process (betas, ``alphas_cumprod``; epsilon, v or
sample prediction; integer timesteps), the same numbers as diffusers' ``DDPMScheduler``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor

from ..errors import KinemaError

Level = float | Tensor  # a Python number, a 0-dim tensor, or (B,) one per sample


def _per_sample(t: Level, like: Tensor) -> Level:
    """A (B,) level viewed as (B, 1, ..., 1) against ``like`` (B, ...), in its dtype; scalars as they are."""
    if isinstance(t, Tensor) and t.ndim == 1:
        return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)
    return t


class NoiseProcess(Protocol):
    """What the training objective, the samplers and the pipelines ask of a noise process."""

    name: str
    num_train_timesteps: int
    clean_level: float

    def add_noise(self, x0: Tensor, noise: Tensor, t: Level) -> Tensor: ...

    def target(self, x0: Tensor, noise: Tensor, t: Level) -> Tensor: ...

    def model_timestep(self, t: Level) -> Tensor | float: ...

    def predict_x0(self, x_t: Tensor, model_output: Tensor, t: Level) -> Tensor: ...

    def alpha_sigma(self, t: Level) -> tuple[Level, Level]: ...

    def training_levels(self, generators: Sequence[torch.Generator]) -> Tensor: ...


# ------------------------------------------------------------------------------------------------
# Flow matching
# ------------------------------------------------------------------------------------------------
SIGMA_SAMPLINGS = ("uniform", "logit_normal")


@dataclass(frozen=True)
class FlowMatching:
    """Rectified flow (diffusers' and Wan's convention): ``x_sigma = (1 - sigma) x0 + sigma noise``,
    the model predicts the velocity ``v = noise - x0 = d x_sigma / d sigma`` and is told
    ``timestep = sigma * num_train_timesteps``; sampling walks sigma from 1 to 0.

    Training draws sigma uniformly in (0, 1) or logit-normally, ``sigmoid(N(logit_mean, logit_std))``
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3), which spends more steps on
    mid-range noise levels where the velocity is hardest to predict.
    """

    num_train_timesteps: int = 1000
    sigma_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    name: str = field(default="flow-matching", init=False)
    clean_level: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise KinemaError(f"sigma_sampling must be one of {list(SIGMA_SAMPLINGS)}; got {self.sigma_sampling!r}")

    def add_noise(self, x0: Tensor, noise: Tensor, t: Level) -> Tensor:
        """``(1 - sigma) * x0 + sigma * noise``."""
        s = _per_sample(t, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Level = None) -> Tensor:
        """The velocity ``noise - x0`` (the same at every level)."""
        return noise - x0

    def model_timestep(self, t: Level) -> Tensor | float:
        """``sigma * num_train_timesteps``: the [0, 1000] time Wan and LTX-Video are conditioned on."""
        return t * self.num_train_timesteps

    def predict_x0(self, x_t: Tensor, model_output: Tensor, t: Level) -> Tensor:
        """The clean-sample estimate ``x - sigma * v``."""
        return x_t - _per_sample(t, x_t) * model_output

    def alpha_sigma(self, t: Level) -> tuple[Level, Level]:
        """``(1 - sigma, sigma)``."""
        return 1 - t, t

    def training_levels(self, generators: Sequence[torch.Generator]) -> Tensor:
        """One sigma in (0, 1) per item, drawn from its generator: (B,) float32."""
        if self.sigma_sampling == "uniform":
            draws = [torch.rand((), generator=g) for g in generators]
        else:
            draws = [torch.sigmoid(torch.randn((), generator=g) * self.logit_std + self.logit_mean) for g in generators]
        return torch.stack(draws)


# ------------------------------------------------------------------------------------------------
# DDPM
# ------------------------------------------------------------------------------------------------
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear")


@dataclass(frozen=True)
class DDPM:
    """The discrete diffusion of Ho et al. 2020: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``
    for integer ``t`` in [0, N), ``abar_t = prod_{s <= t} (1 - beta_s)``, betas ``linear`` from
    ``beta_start`` to ``beta_end`` (or ``scaled_linear``: linear in sqrt(beta)), as diffusers'
    ``DDPMScheduler`` builds them. The model predicts the noise (``epsilon``), ``v = sqrt(abar) noise
    - sqrt(1 - abar) x0`` (``v_prediction``) or ``x0`` (``sample``) and is told ``t`` itself.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    name: str = field(default="ddpm", init=False)
    clean_level: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise KinemaError(f"num_train_timesteps must be an integer >= 2; got {n!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise KinemaError(f"prediction_type must be one of {list(PREDICTION_TYPES)}; got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise KinemaError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}; got {self.beta_schedule!r}")
        if not (0 < self.beta_start < self.beta_end < 1) or not all(map(math.isfinite, (self.beta_start, self.beta_end))):
            raise KinemaError(f"betas must satisfy 0 < beta_start < beta_end < 1; got {self.beta_start}, {self.beta_end}")

    @property
    def betas(self) -> Tensor:
        """(N,) float32, as diffusers' DDPMScheduler makes them."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        return torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2

    @property
    def alphas_cumprod(self) -> Tensor:
        """(N,) float32 ``abar_t``."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def _scales(self, t: Level, like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_t) and sqrt(1 - abar_t), shaped to broadcast against ``like``."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device)
        if t.is_floating_point() or bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise KinemaError(f"DDPM levels are integer timesteps in [0, {self.num_train_timesteps}); got {t.tolist()}")
        abar = self.alphas_cumprod.to(like.device)[t.to(like.device)]
        shape = (-1, *([1] * (like.dim() - 1))) if abar.ndim == 1 else ()
        return abar.sqrt().to(like.dtype).reshape(shape), (1 - abar).sqrt().to(like.dtype).reshape(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Level) -> Tensor:
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (diffusers' ``add_noise``)."""
        a, s = self._scales(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Level) -> Tensor:
        """The noise, ``v`` or ``x0``, as ``prediction_type`` says."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        a, s = self._scales(t, x0)
        return a * noise - s * x0

    def model_timestep(self, t: Level) -> Tensor | float:
        """The integer timestep itself."""
        return t

    def predict_x0(self, x_t: Tensor, model_output: Tensor, t: Level) -> Tensor:
        """``x0`` from the model's prediction at ``x_t``."""
        if self.prediction_type == "sample":
            return model_output
        a, s = self._scales(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - s * model_output) / a
        return a * x_t - s * model_output

    def alpha_sigma(self, t: Level) -> tuple[Level, Level]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))``."""
        abar = self.alphas_cumprod[torch.as_tensor(t)]
        return abar.sqrt(), (1 - abar).sqrt()

    def training_levels(self, generators: Sequence[torch.Generator]) -> Tensor:
        """One integer timestep in [0, N) per item, drawn from its generator: (B,) int64."""
        return torch.stack([torch.randint(self.num_train_timesteps, (), generator=g) for g in generators])
