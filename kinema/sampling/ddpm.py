"""Samplers of the discrete diffusion process (:class:`~kinema.sampling.noise.DDPM`): DDPM
(ancestral) and DDIM, stateless like the flow samplers.

A discrete schedule is ``steps + 1`` int64 *levels*: the integer timesteps the model is told at
each step (``levels[:-1]``, descending) and, last, where the final step lands (``-1``: clean).
Step ``i`` takes ``x`` at ``levels[i]`` and the model's prediction there to the sample at the
previous level. The timesteps are diffusers' ``set_timesteps`` rules (``timestep_spacing``
``"leading"``, ``"trailing"`` or ``"linspace"``, with ``steps_offset``), and each step is the
arithmetic of diffusers' ``DDPMScheduler.step`` / ``DDIMScheduler.step`` in the same order, so a
whole trajectory equals theirs on the same model outputs and noise:

- **DDPM** goes from ``levels[i]`` to ``levels[i + 1]`` through the posterior mean
  ``(sqrt(abar_prev) beta_t / (1 - abar_t)) x0 + (sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t)) x_t``
  plus, above ``t = 0``, noise of variance ``(1 - abar_prev) / (1 - abar_t) beta_t``
  (``fixed_small``) or ``beta_t`` (``fixed_large``).
- **DDIM** goes from ``t`` to ``t - N // steps`` (diffusers' rule, whatever the spacing):
  ``sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z`` with
  ``s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``; ``eta = 0`` is
  deterministic. Below level 0 ``abar_prev`` is 1 (``set_alpha_to_one``) or ``abar_0``.

Noise drawn during sampling comes from the generator(s) the sampler's state holds, by diffusers'
``randn_tensor`` rule (one draw per sample for a list of generators), so the same generator gives
the same video in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import KinemaError
from .noise import DDPM

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
CLEAN = -1  # the level after the last step of a DDPM schedule: the clean sample


def discrete_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
    """The ``(steps,)`` int64 timesteps of diffusers' ``DDPMScheduler`` / ``DDIMScheduler.set_timesteps``, descending."""
    n, big = num_inference_steps, num_train_timesteps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= big:
        raise KinemaError(f"num_inference_steps must be a whole number from 1 to {big} (the model's training timesteps); got {n!r}")
    if spacing not in TIMESTEP_SPACINGS:
        raise KinemaError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}; got {spacing!r}")
    if spacing == "linspace":
        t = np.linspace(0, big - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        t = (np.arange(0, n) * (big // n)).round()[::-1].copy().astype(np.int64) + steps_offset
    else:
        t = np.round(np.arange(big, 0, -big / n)).astype(np.int64) - 1
    if t[0] >= big:
        raise KinemaError(f"steps_offset {steps_offset} puts the first timestep at {t[0]}, past the model's {big} training timesteps")
    return torch.from_numpy(t)


def draw_noise(shape: Sequence[int], generator: Any, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise drawn as diffusers' ``randn_tensor`` draws it: on the generator's device
    (moved to ``device``), one draw of ``(1, ...)`` per sample for a list of generators."""
    if isinstance(generator, (list, tuple)):
        parts = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(parts).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def _predict(process: DDPM, x: Tensor, out: Tensor, a_t: Tensor, b_t: Tensor) -> tuple[Tensor, Tensor]:
    """(x0, epsilon) from the model's output, in diffusers' order of operations (``b_t = 1 - abar_t``)."""
    kind = process.prediction_type
    if kind == "epsilon":
        return (x - b_t ** (0.5) * out) / a_t ** (0.5), out
    if kind == "sample":
        return out, (x - a_t ** (0.5) * out) / b_t ** (0.5)
    return (a_t**0.5) * x - (b_t**0.5) * out, (a_t**0.5) * out + (b_t**0.5) * x


def _check(levels: Tensor, index: int) -> None:
    if levels.ndim != 1 or not 0 <= index < len(levels) - 1:
        raise KinemaError(f"step index {index} is outside a schedule of {len(levels) - 1} steps")


@dataclass(frozen=True)
class DDPMSampler:
    """Ancestral DDPM sampling (diffusers' ``DDPMScheduler.step``); its state is the generator(s)
    it draws the step noise from."""

    process: DDPM = field(default_factory=DDPM)
    clip_sample: bool = True  # clamp the x0 estimate to [-clip_sample_range, clip_sample_range] (pixel models)
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    name: str = field(default="ddpm", init=False)

    def __post_init__(self) -> None:
        if self.variance_type not in VARIANCE_TYPES:
            raise KinemaError(f"variance_type must be one of {list(VARIANCE_TYPES)}; got {self.variance_type!r}")

    def levels(self, timesteps: Tensor) -> Tensor:
        """The schedule for these timesteps: each step lands on the next, the last on the clean sample."""
        return torch.cat([timesteps.to(torch.int64), torch.tensor([CLEAN])])

    def init_state(self, generator: Any = None) -> Any:
        return generator

    def step(self, x: Tensor, model_output: Tensor, levels: Tensor, index: int, state: Any = None) -> tuple[Tensor, Any]:
        """``x`` at ``levels[index]`` -> ``x`` at ``levels[index + 1]`` given the model's output."""
        _check(levels, index)
        t, prev_t = int(levels[index]), int(levels[index + 1])
        acp = self.process.alphas_cumprod
        one = torch.tensor(1.0)
        a_t = acp[t]
        a_prev = acp[prev_t] if prev_t >= 0 else one
        b_t, b_prev = 1 - a_t, 1 - a_prev
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        x0, _ = _predict(self.process, x, model_output, a_t, b_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        x0_coeff = (a_prev ** (0.5) * beta_t) / b_t
        x_coeff = alpha_t ** (0.5) * b_prev / b_t
        prev = x0_coeff * x0 + x_coeff * x
        if t > 0:
            noise = draw_noise(model_output.shape, state, model_output.device, model_output.dtype)
            if self.variance_type == "fixed_small":
                variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
            else:
                variance = beta_t
            prev = prev + (variance**0.5) * noise
        return prev.to(x.dtype), state


@dataclass(frozen=True)
class DDIMSampler:
    """DDIM (diffusers' ``DDIMScheduler.step``): deterministic at ``eta = 0``; above it, its state is
    the generator(s) it draws the step noise from."""

    process: DDPM = field(default_factory=DDPM)
    eta: float = 0.0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True  # below level 0, abar is 1 (else abar_0)
    name: str = field(default="ddim", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
            raise KinemaError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise); got {self.eta!r}")

    def levels(self, timesteps: Tensor) -> Tensor:
        """The schedule for these timesteps; DDIM steps from ``t`` to ``t - N // steps`` whatever the
        spacing (the last entry is where the last step lands, possibly below 0)."""
        timesteps = timesteps.to(torch.int64)
        return torch.cat([timesteps, timesteps[-1:] - self.process.num_train_timesteps // len(timesteps)])

    def init_state(self, generator: Any = None) -> Any:
        return generator

    def step(self, x: Tensor, model_output: Tensor, levels: Tensor, index: int, state: Any = None) -> tuple[Tensor, Any]:
        """``x`` at ``levels[index]`` -> ``x`` at ``levels[index] - N // steps`` given the model's output."""
        _check(levels, index)
        t = int(levels[index])
        prev_t = t - self.process.num_train_timesteps // (len(levels) - 1)
        acp = self.process.alphas_cumprod
        final = torch.tensor(1.0) if self.set_alpha_to_one else acp[0]
        a_t = acp[t]
        a_prev = acp[prev_t] if prev_t >= 0 else final
        b_t, b_prev = 1 - a_t, 1 - a_prev
        x0, eps = _predict(self.process, x, model_output, a_t, b_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        variance = (b_prev / b_t) * (1 - a_t / a_prev)
        std = self.eta * variance ** (0.5)
        direction = (1 - a_prev - std**2) ** (0.5) * eps
        prev = a_prev ** (0.5) * x0 + direction
        if self.eta > 0:
            prev = prev + std * draw_noise(model_output.shape, state, model_output.device, model_output.dtype)
        return prev.to(x.dtype), state


DISCRETE_SAMPLERS: dict[str, type] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


# ------------------------------------------------------------------------------------------------
# What a model's scheduler decides, for the discrete process
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiscreteSamplerSpec:
    """Which discrete sampler with which settings: the DDPM counterpart of
    :class:`~kinema.sampling.SamplerSpec`, with the same ``build`` / ``with_overrides`` / ``process``
    a pipeline asks of it::

        spec = DiscreteSamplerSpec("ddim", DDPM(prediction_type="epsilon"), eta=0.0)
        sampler, levels, timesteps = spec.build(50)        # (51,) int64 levels, (50,) timesteps
    """

    name: str = "ddim"  # "ddpm" or "ddim"
    noise: DDPM = field(default_factory=DDPM)
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    eta: float = 0.0  # ddim
    set_alpha_to_one: bool = True  # ddim
    variance_type: str = "fixed_small"  # ddpm
    resolution_shift: None = None  # a discrete schedule has no shift (the pipelines ask)
    shift_terminal: None = None

    def __post_init__(self) -> None:
        if self.name not in DISCRETE_SAMPLERS:
            raise KinemaError(f"unknown sampler {self.name!r} for a DDPM model; choose one of {sorted(DISCRETE_SAMPLERS)}")
        if not isinstance(self.noise, DDPM):
            raise KinemaError(f"a discrete sampler needs a DDPM noise process; got {type(self.noise).__name__}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise KinemaError(f"timestep_spacing must be one of {list(TIMESTEP_SPACINGS)}; got {self.timestep_spacing!r}")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise KinemaError(f"steps_offset must be a whole number >= 0; got {self.steps_offset!r}")
        r = self.clip_sample_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise KinemaError(f"clip_sample_range must be a positive number; got {r!r}")
        self.get_sampler()  # checks eta and variance_type

    @property
    def process(self) -> DDPM:
        return self.noise

    @property
    def shift(self) -> None:
        return None

    def get_sampler(self) -> DDPMSampler | DDIMSampler:
        common = dict(process=self.noise, clip_sample=bool(self.clip_sample), clip_sample_range=float(self.clip_sample_range))
        if self.name == "ddpm":
            return DDPMSampler(**common, variance_type=self.variance_type)
        return DDIMSampler(**common, eta=self.eta, set_alpha_to_one=bool(self.set_alpha_to_one))

    def with_overrides(self, name: str | None = None, shift: float | None = None) -> "DiscreteSamplerSpec":
        """A copy with another sampler (``"ddpm"`` or ``"ddim"``); a shift is for flow-matching models."""
        if shift is not None:
            raise KinemaError("shift applies to flow-matching models; this model's noise process is DDPM")
        if name is None or name == self.name:
            return self
        from dataclasses import replace

        return replace(self, name=name)

    def build(self, num_inference_steps: int, device: torch.device | str | None = None, seq_len: int | None = None) -> tuple[Any, Tensor, Tensor]:
        """``(sampler, levels, timesteps)``: levels ``(steps + 1,)`` int64 on the CPU (what the steps
        read), timesteps ``(steps,)`` on ``device`` (what the model is told)."""
        del seq_len  # no resolution-dependent schedule here
        sampler = self.get_sampler()
        timesteps = discrete_timesteps(num_inference_steps, self.noise.num_train_timesteps, self.timestep_spacing, self.steps_offset)
        levels = sampler.levels(timesteps)
        return sampler, levels, timesteps if device is None else timesteps.to(device)


def _prediction(value: Any) -> str:
    from .noise import PREDICTION_TYPES

    if value not in PREDICTION_TYPES:
        raise ValueError(f"kinema supports {', '.join(PREDICTION_TYPES)}")
    return value


def discrete_spec_from_diffusers(config: dict[str, Any]) -> DiscreteSamplerSpec:
    """From a diffusers ``DDPMScheduler`` or ``DDIMScheduler`` config (missing keys take diffusers'
    defaults); settings that would make the result differ from diffusers' raise."""
    from ..schema import ignored, must, read, read_table

    cls = config.get("_class_name")
    common = {
        "num_train_timesteps": read(1000),
        "beta_start": read(0.0001),
        "beta_end": read(0.02),
        "beta_schedule": read("linear"),
        "prediction_type": read("epsilon", convert=_prediction),
        "clip_sample": read(True),
        "clip_sample_range": read(1.0),
        "timestep_spacing": read("leading"),
        "steps_offset": read(0),
        "trained_betas": must(None),
        "thresholding": must(False),
        "rescale_betas_zero_snr": must(False),
        "dynamic_thresholding_ratio": ignored(),
        "sample_max_value": ignored(),
    }
    if cls == "DDPMScheduler":
        table = {**common, "variance_type": read("fixed_small")}
    elif cls == "DDIMScheduler":
        table = {**common, "set_alpha_to_one": read(True)}
    else:
        raise KinemaError(f"expected a DDPMScheduler or DDIMScheduler config; got _class_name {cls!r}")
    r = read_table(config, table, what=f"{cls} config", hint="results could differ from diffusers")
    noise = DDPM(r.pop("num_train_timesteps"), r.pop("beta_start"), r.pop("beta_end"), r.pop("beta_schedule"), r.pop("prediction_type"))
    return DiscreteSamplerSpec("ddpm" if cls == "DDPMScheduler" else "ddim", noise, **r)
