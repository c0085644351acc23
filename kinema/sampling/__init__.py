"""Samplers for diffusion denoisers: schedules, steps, guidance, and the plain loop. Flow-matching
samplers (Euler, UniPC) walk sigmas; the DDPM process's samplers (DDPM, DDIM) walk integer levels
(:mod:`kinema.sampling.ddpm`); both run in :func:`sample`.

Every sampler has one interface, so the pipeline loop need not know which it drives::

    spec = SamplerSpec.from_diffusers(json.load(open(".../scheduler/scheduler_config.json")))
    sampler, sigmas, timesteps = spec.build(num_inference_steps=50)   # (51,), (50,)

    def velocity(x, i):                                               # the model as a callable
        t = timesteps[i].expand(x.shape[0])
        return cfg(model(x, t, uncond), model(x, t, cond), guidance_scale)

    video_latents = sample(velocity, noise, sigmas, sampler)

Samplers are immutable values; a sampler's memory between steps (UniPC's earlier x0 estimates)
is an explicit state value that ``step`` takes and returns. No step counter is hidden anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import Tensor

from ..errors import KinemaError
from ..schema import Key, ignored, must, read, read_table
from .ddpm import (
    DISCRETE_SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DiscreteSamplerSpec,
    discrete_spec_from_diffusers,
    discrete_timesteps,
)
from .flow_match import EulerSampler, euler_step
from .guidance import cfg, rescale_guidance
from .noise import DDPM, FlowMatching, NoiseProcess
from .schedules import (
    NUM_TRAIN_TIMESTEPS,
    TIME_SHIFT_TYPES,
    Schedule,
    flow_match_euler_schedule,
    flow_sigmas,
    model_timesteps,
    resolution_shift_mu,
    resolution_shift_schedule,
    schedule_from_sigmas,
    shift_sigmas,
    strength_start_index,
    stretch_to_terminal,
    time_shift,
    unipc_flow_schedule,
)
from .unipc import UniPCSampler, UniPCState, unipc_step

__all__ = [
    "DDIMSampler",
    "DDPM",
    "DDPMSampler",
    "DISCRETE_SAMPLERS",
    "DiscreteSamplerSpec",
    "discrete_timesteps",
    "FlowMatching",
    "NUM_TRAIN_TIMESTEPS",
    "NoiseProcess",
    "ResolutionShift",
    "SAMPLERS",
    "EulerSampler",
    "Sampler",
    "SamplerSpec",
    "Schedule",
    "UniPCSampler",
    "UniPCState",
    "cfg",
    "euler_step",
    "flow_match_euler_schedule",
    "flow_sigmas",
    "model_timesteps",
    "rescale_guidance",
    "resolution_shift_mu",
    "resolution_shift_schedule",
    "sample",
    "sampling_from_scheduler_config",
    "schedule_from_sigmas",
    "shift_sigmas",
    "strength_start_index",
    "stretch_to_terminal",
    "time_shift",
    "unipc_flow_schedule",
    "unipc_step",
]


class Sampler(Protocol):
    """The interface every sampler offers the denoising loop."""

    name: str
    default_schedule: Callable[..., Schedule]
    """``(num_inference_steps, shift=1.0, num_train_timesteps=1000) -> Schedule`` it is used with."""

    def init_state(self, generator: Any = None) -> Any:
        """The state before the first step (``None`` for memoryless samplers; the generator for
        samplers that draw noise as they go)."""

    def step(self, x: Tensor, model_output: Tensor, sigmas: Tensor, index: int, state: Any) -> tuple[Tensor, Any]:
        """``x`` at ``sigmas[index]`` and the model's velocity there -> ``(x at sigmas[index + 1], state)``."""


SAMPLERS: dict[str, Sampler] = {
    "euler": EulerSampler(),
    "unipc": UniPCSampler(),  # Wan 2.1's default: order 2, bh2, corrector on
}


def sample(
    model_fn: Callable[[Tensor, int], Tensor],
    x: Tensor,
    sigmas: Tensor,
    sampler: Sampler,
    *,
    callback: Callable[[int, Tensor], Tensor | None] | None = None,
    progress: bool = False,
    generator: Any = None,
) -> Tensor:
    """Run ``sampler`` over the whole schedule: the plain denoising loop.

    Args:
        model_fn: ``(x, index) -> velocity`` at ``sigmas[index]``; look up ``Schedule.timesteps[index]``
            for the value the denoiser is conditioned on, and apply guidance inside.
        x: the starting sample at ``sigmas[0]`` (noise, for text-to-video), e.g. ``(B, C, F, H, W)``.
        sigmas: ``(steps + 1,)`` schedule ending in 0, e.g. ``Schedule.sigmas``.
        sampler: one of :data:`SAMPLERS` (or any :class:`Sampler`).
        callback: called as ``callback(index, x_next)`` after each step (previews, cancellation);
            a tensor it returns replaces ``x_next``.
        progress: show a tqdm progress bar.
        generator: a torch.Generator (or one per sample) for samplers that draw noise at each step
            (DDPM; DDIM with eta > 0); the others ignore it.

    Returns:
        The sample at ``sigmas[-1] = 0``, same shape and dtype as ``x``.
    """
    steps = range(len(sigmas) - 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"sampling ({sampler.name})", leave=False)
    state = sampler.init_state(generator)
    for i in steps:
        x, state = sampler.step(x, model_fn(x, i), sigmas, i, state)
        if callback is not None:
            replaced = callback(i, x)
            x = x if replaced is None else replaced
    return x


# ---------------------------------------------------------------------------------------------
# From a diffusers scheduler config (``scheduler/scheduler_config.json``)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolutionShift:
    """A shift that grows with the number of latent tokens (LTX-Video, Flux): diffusers'
    ``use_dynamic_shifting``. ``mu`` is linear in the token count through the two anchor points and
    the sigmas are time-shifted by it (see :func:`resolution_shift_schedule`).

    Defaults are diffusers' ``FlowMatchEulerDiscreteScheduler`` defaults; the LTX-Video scheduler
    config sets ``ResolutionShift(1024, 4096, 0.95, 2.05)``.
    """

    base_seq_len: int = 256  # token count at which mu = base_shift
    max_seq_len: int = 4096  # token count at which mu = max_shift
    base_shift: float = 0.5
    max_shift: float = 1.15
    time_shift_type: str = "exponential"  # one of TIME_SHIFT_TYPES

    def __post_init__(self) -> None:
        if self.time_shift_type not in TIME_SHIFT_TYPES:
            raise KinemaError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}; got {self.time_shift_type!r}")
        for name in ("base_seq_len", "max_seq_len", "base_shift", "max_shift"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise KinemaError(f"resolution shift {name} must be a finite number; got {v!r}")
        if self.base_seq_len == self.max_seq_len:
            raise KinemaError(f"resolution shift needs base_seq_len != max_seq_len; both are {self.base_seq_len}")

    @classmethod
    def static(cls, shift: float) -> "ResolutionShift":
        """A scheduler's static ``shift`` applied to the sigmas a pipeline passes it (diffusers'
        ``FlowMatchEulerDiscreteScheduler`` without dynamic shifting, as ``LTXPipeline`` drives it),
        in its own order of operations: ``shift t / (1 + (shift - 1) t)``."""
        return cls(base_shift=shift, max_shift=shift, time_shift_type="static")

    @classmethod
    def fixed(cls, shift: float, time_shift_type: str = "exponential") -> "ResolutionShift":
        """The same mu at every resolution, the one of a static ``shift`` (``log(shift)`` for the
        exponential time shift, which then equals the static shift ``s t / (1 + (s - 1) t)``)."""
        mu = math.log(shift) if time_shift_type == "exponential" else float(shift)
        return cls(base_shift=mu, max_shift=mu, time_shift_type=time_shift_type)

    def mu(self, seq_len: int) -> float:
        """The log-shift for ``seq_len`` latent tokens (diffusers' ``calculate_shift``)."""
        return resolution_shift_mu(seq_len, self.base_seq_len, self.max_seq_len, self.base_shift, self.max_shift)


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, with which schedule settings: what a model's scheduler config decides.

    A small immutable value the pipeline keeps per model and overrides per call::

        spec = SamplerSpec.from_diffusers(scheduler_config)     # or SamplerSpec("unipc", shift=5.0)
        sampler, sigmas, timesteps = spec.with_overrides(shift=8.0).build(50, device="cuda")
    """

    name: str = "unipc"  # a key of SAMPLERS; its default_schedule is used
    shift: float = 1.0  # resolution shift of the sigma schedule (Wan 2.1: 3.0 at 480p, 5.0 at 720p)
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS  # timestep = sigma * this
    sampler: Sampler | None = None  # a configured sampler named `name`; None: SAMPLERS[name]
    # LTX-Video: the shift follows the token count (then `shift` is unused) and the schedule is
    # resolution_shift_schedule, stretched to end at shift_terminal. None: the sampler's own schedule.
    resolution_shift: ResolutionShift | None = None
    shift_terminal: float | None = None  # last sigma before 0 (LTX-Video: 0.1); euler only (a static shift or resolution_shift)
    # Wan's original image-to-video rule (generate.py): the shift follows the frame area, as
    # ((most pixels, shift), ...) in rising order, the last one also above; None: ``shift`` at every size.
    area_shift: tuple[tuple[int, float], ...] | None = None
    # A model trained with its first latent frames given (a time per frame, objective.past_share):
    # extending a video holds the known frames at this noise level and tells the model so. None:
    # a model trained on whole clips, whose known frames follow the sample's level (replacement).
    past_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise KinemaError(f"unknown sampler {self.name!r}; choose one of {sorted(SAMPLERS)}")
        if self.sampler is not None and self.sampler.name != self.name:
            raise KinemaError(f"SamplerSpec named {self.name!r} holds a {self.sampler.name!r} sampler")
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, float)) or not self.shift > 0:
            raise KinemaError(f"shift must be a number > 0 (Wan 2.1: 3.0 at 480p, 5.0 at 720p); got {self.shift!r}")
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise KinemaError(f"num_train_timesteps must be an integer >= 2; got {n!r}")
        object.__setattr__(self, "shift", float(self.shift))
        if self.resolution_shift is not None and self.name != "euler":
            raise KinemaError(
                f"a resolution-dependent shift (LTX-Video's schedule) is supported with the euler sampler only; got {self.name!r}"
            )
        p = self.past_sigma
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1):
            raise KinemaError(f"past_sigma must be a noise level in [0, 1) (or null: the model was not trained with a given past); got {p!r}")
        if self.shift_terminal is not None:
            if self.resolution_shift is None and self.name != "euler":
                raise KinemaError("shift_terminal is supported only with the euler sampler (FlowMatchEulerDiscreteScheduler's schedule)")
            t = self.shift_terminal
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
                raise KinemaError(f"shift_terminal must lie in (0, 1) (LTX-Video: 0.1); got {t!r}")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> SamplerSpec:
        """From a diffusers ``scheduler/scheduler_config.json`` dict; see :func:`sampling_from_scheduler_config`."""
        return sampling_from_scheduler_config(config)

    def for_size(self, height: int, width: int) -> SamplerSpec:
        """The spec at a frame size: with ``area_shift``, its shift for ``height * width`` pixels."""
        if self.area_shift is None:
            return self
        area = height * width
        shift = next((s for most, s in self.area_shift if area <= most), self.area_shift[-1][1])
        return replace(self, shift=shift)

    def with_overrides(self, name: str | None = None, shift: float | None = None) -> SamplerSpec:
        """A copy with another sampler and/or shift; ``None`` keeps the current one. Switching to
        another sampler takes that sampler's defaults and its own default schedule. With a
        resolution-dependent shift, ``shift`` fixes it at every resolution (``ResolutionShift.fixed``)."""
        spec = self
        if name is not None and name != self.name:
            spec = replace(spec, name=name, sampler=None)
        if shift is not None:
            spec = replace(spec, shift=shift)
            if spec.resolution_shift is not None:
                spec = replace(spec, resolution_shift=ResolutionShift.fixed(spec.shift, spec.resolution_shift.time_shift_type))
        return spec

    @property
    def process(self) -> FlowMatching:
        """The noise process the schedule walks (flow matching, timestep = sigma * num_train_timesteps):
        what a partial denoise starts from and what a clean frame is told."""
        return FlowMatching(self.num_train_timesteps)

    def get_sampler(self) -> Sampler:
        return self.sampler if self.sampler is not None else SAMPLERS[self.name]

    def schedule(self, num_inference_steps: int, seq_len: int | None = None) -> Schedule:
        """The sampler's default schedule with this spec's shift and ``num_train_timesteps``; with a
        resolution-dependent shift, LTX-Video's schedule for ``seq_len`` latent tokens."""
        if self.resolution_shift is None:
            if self.shift_terminal is not None:  # euler only (checked with the spec)
                return flow_match_euler_schedule(num_inference_steps, self.shift, self.num_train_timesteps, self.shift_terminal)
            return self.get_sampler().default_schedule(num_inference_steps, self.shift, self.num_train_timesteps)
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise KinemaError(f"this schedule's shift depends on the resolution: pass seq_len, the latent token count; got {seq_len!r}")
        r = self.resolution_shift
        return resolution_shift_schedule(num_inference_steps, r.mu(seq_len), self.shift_terminal, self.num_train_timesteps, r.time_shift_type)

    def build(
        self, num_inference_steps: int, device: torch.device | str | None = None, seq_len: int | None = None
    ) -> tuple[Sampler, Tensor, Tensor]:
        """``(sampler, sigmas, timesteps)`` for a run of ``num_inference_steps``.

        ``sigmas`` ``(steps + 1,)`` stay float32 on the CPU (the steps read them as scalars, as
        diffusers does, so no device sync per step); ``timesteps`` ``(steps,)`` go to ``device``,
        ready for the denoiser: ``timesteps[i]`` conditions the model at ``sigmas[i]``.
        ``seq_len`` (latent tokens) is needed only with a resolution-dependent shift.
        """
        s = self.schedule(num_inference_steps, seq_len)
        timesteps = s.timesteps if device is None else s.timesteps.to(device)
        return self.get_sampler(), s.sigmas, timesteps


_UNIPC_KEYS: dict[str, Key] = {
    "num_train_timesteps": read(1000),
    "flow_shift": read(1.0),
    "solver_order": read(2),
    "solver_type": read("bh2"),
    "lower_order_final": read(True),
    "disable_corrector": read([]),
    "prediction_type": must("flow_prediction", "epsilon"),
    "use_flow_sigmas": must(True, False),
    "predict_x0": must(True),
    "thresholding": must(False),
    "use_karras_sigmas": must(False),
    "use_exponential_sigmas": must(False),
    "use_beta_sigmas": must(False),
    "use_dynamic_shifting": must(False),
    "final_sigmas_type": must("zero"),
    "shift_terminal": must(None, off=(0, 0.0)),  # diffusers tests it for truth: None, 0 and 0.0 all mean "off"
    "solver_p": must(None),
    **{
        key: ignored()
        for key in (
            "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr",
            "timestep_spacing", "steps_offset", "dynamic_thresholding_ratio", "sample_max_value",
            "time_shift_type", "sigma_min", "sigma_max",
        )
    },
}  # fmt: skip

_EULER_KEYS: dict[str, Key] = {
    "num_train_timesteps": read(1000),
    "shift": read(1.0),
    "use_dynamic_shifting": read(False),  # LTX-Video: True, with the four keys below
    "base_shift": read(0.5),
    "max_shift": read(1.15),
    "base_image_seq_len": read(256),
    "max_image_seq_len": read(4096),
    "time_shift_type": read("exponential"),
    "shift_terminal": read(None),  # LTX-Video: 0.1
    "invert_sigmas": must(False),
    "use_karras_sigmas": must(False),
    "use_exponential_sigmas": must(False),
    "use_beta_sigmas": must(False),
    "stochastic_sampling": must(False),
}  # fmt: skip

# diffusers maps these old UniPC solver names to "bh2" (UniPCMultistepScheduler.__init__).
_UNIPC_SOLVER_ALIASES = {"bh1": "bh1", "bh2": "bh2", "midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}
_HINT = "results could differ from diffusers; use a Wan-style flow-matching scheduler config"


def _read(config: Mapping[str, Any], table: dict[str, Key]) -> dict[str, Any]:
    """The settings kinema reads from a scheduler config (:func:`kinema.schema.read_table`)."""
    return read_table(config, table, what=f"{config.get('_class_name')} config", hint=_HINT)


def sampling_from_scheduler_config(config: Mapping[str, Any]) -> SamplerSpec | DiscreteSamplerSpec:
    """Build kinema's sampler and schedule settings from a diffusers ``scheduler_config.json`` dict.

    Supports ``UniPCMultistepScheduler`` with flow sigmas (Wan 2.1's) and
    ``FlowMatchEulerDiscreteScheduler`` with a static shift, or with ``use_dynamic_shifting`` and
    an optional ``shift_terminal`` (LTX-Video's; the schedule is then the one diffusers'
    ``LTXPipeline`` builds, :func:`resolution_shift_schedule`). Missing keys take diffusers' defaults.
    Raises :class:`KinemaError` for any other class, and for any setting that would make the
    result differ from diffusers' (Karras sigmas, another prediction type, dynamic shifting...).
    """
    cls = config.get("_class_name")
    if cls in ("DDPMScheduler", "DDIMScheduler"):
        return discrete_spec_from_diffusers(config)
    if cls == "UniPCMultistepScheduler":
        r = _read(config, _UNIPC_KEYS)
        solver_type = _UNIPC_SOLVER_ALIASES.get(r["solver_type"])
        if solver_type is None:
            raise KinemaError(f"UniPCMultistepScheduler solver_type must be 'bh1' or 'bh2'; got {r['solver_type']!r}")
        order = r["solver_order"]
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise KinemaError(f"UniPCMultistepScheduler solver_order must be an integer >= 1; got {order!r}")
        if not r["lower_order_final"] and order > 1:
            raise KinemaError(
                "UniPCMultistepScheduler with lower_order_final=false and solver_order > 1 steps into "
                "sigma 0 with a multistep update, which gives inf/NaN; set lower_order_final to true"
            )
        sampler: Sampler = UniPCSampler(
            order=order,
            solver_type=solver_type,
            lower_order_final=bool(r["lower_order_final"]),
            disable_corrector=frozenset(r["disable_corrector"] or ()),
        )
        shift = r["flow_shift"]
    elif cls == "FlowMatchEulerDiscreteScheduler":
        r = _read(config, _EULER_KEYS)
        sampler, shift = EulerSampler(), r["shift"]
        terminal = r["shift_terminal"] or None  # diffusers tests it for truth: 0 means off
        if not r["use_dynamic_shifting"]:
            return SamplerSpec(sampler.name, shift, r["num_train_timesteps"], shift_terminal=terminal)
        resolution = ResolutionShift(
            r["base_image_seq_len"], r["max_image_seq_len"], r["base_shift"], r["max_shift"], r["time_shift_type"]
        )
        # `shift` is unused under dynamic shifting (diffusers ignores it too)
        return SamplerSpec(sampler.name, shift, r["num_train_timesteps"], resolution_shift=resolution, shift_terminal=terminal)
    else:
        raise KinemaError(
            f"scheduler _class_name {cls!r} is not supported; kinema reads UniPCMultistepScheduler "
            "(flow sigmas), FlowMatchEulerDiscreteScheduler, DDPMScheduler and DDIMScheduler configs"
        )
    configured = None if sampler == SAMPLERS[sampler.name] else sampler  # keep specs comparable
    return SamplerSpec(sampler.name, shift, r["num_train_timesteps"], sampler=configured)
