"""Sigma schedules for flow-matching samplers, with the resolution shift used by Wan 2.1.

Flow convention (as in diffusers and Wan): ``x_sigma = (1 - sigma) * x0 + sigma * noise``, the
model predicts the velocity ``v = noise - x0``, and sampling walks ``sigma`` from (almost) 1 down
to 0. A schedule is ``steps + 1`` float32 sigmas, descending, ending in exactly 0; step ``i`` goes
from ``sigmas[i]`` to ``sigmas[i + 1]`` and the denoiser is conditioned on ``timesteps[i]``.

Two schedules reproduce, value for value, what diffusers' schedulers build in ``set_timesteps``
(so that a Wan checkpoint's ``scheduler/scheduler_config.json`` means the same thing here):

- :func:`unipc_flow_schedule`: ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=s)``,
  Wan's default. ``linspace(1, 1/N, steps + 1)[:-1]`` in float64, shifted once, the first sigma
  pulled from 1 to ``1 - 1e-6`` (UniPC works in log-SNR, which is -inf at sigma 1), timesteps
  ``int64(sigma * N)`` (truncated: the transformer of Wan sees whole-number timesteps).
- :func:`flow_match_euler_schedule`: ``FlowMatchEulerDiscreteScheduler(shift=s)``. A linspace of
  ``steps`` points between the *shifted* training sigmas ``shift(1) = 1`` and ``shift(1/N)``, end
  point included (so the last step runs from nearly 0 to 0), shifted a second time; timesteps stay
  float32 ``sigma * N``. With few steps this differs a lot from the UniPC schedule, even at
  shift 1; that is what diffusers does, kept on purpose.

A third, :func:`resolution_shift_schedule`, is LTX-Video's (and Flux's): the shift grows with the
number of latent tokens. The sigmas ``linspace(1, 1/N, N)`` are time-shifted by ``exp(mu)`` with
``mu`` linear in the token count (:func:`resolution_shift_mu`), then optionally stretched so that
the last sigma before 0 is ``shift_terminal``; this is ``FlowMatchEulerDiscreteScheduler(
use_dynamic_shifting=True, shift_terminal=...)`` after ``set_timesteps(sigmas=..., mu=mu)`` as
diffusers' ``LTXPipeline`` calls it, bit for bit.
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from ..errors import KinemaError

T = TypeVar("T", float, np.ndarray, torch.Tensor)

NUM_TRAIN_TIMESTEPS = 1000
"""Wan 2.1 (and most flow models) are trained with timesteps ``sigma * 1000``."""

UNIPC_SIGMA_ONE_EPS = 1e-6
"""diffusers' UniPC subtracts this from a first sigma of 1 (log-SNR would be -inf there)."""


class Schedule(NamedTuple):
    """An explicit sampling schedule.

    Attributes:
        sigmas: ``(steps + 1,)`` float32 on the CPU, descending, ``sigmas[-1] == 0``.
        timesteps: ``(steps,)`` the value the denoiser is conditioned on at each step
            (``sigma * num_train_timesteps``; int64 for the UniPC schedule, float32 otherwise).
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1


def shift_sigmas(sigmas: T, shift: float) -> T:
    """The resolution shift ``s * t / (1 + (s - 1) * t)`` (SD3 / Wan): ``s > 1`` spends more of
    the steps at high noise. Maps 0 -> 0 and 1 -> 1. Works on floats, numpy arrays and tensors,
    keeping their dtype; the expression is evaluated in the same order as diffusers'."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check(num_inference_steps: int, shift: float, num_train_timesteps: int) -> None:
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise KinemaError(f"num_inference_steps must be a positive integer; got {num_inference_steps!r}")
    if not shift > 0:
        raise KinemaError(f"shift must be > 0 (Wan uses 3.0 for 480p, 5.0 for 720p); got {shift!r}")
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise KinemaError(f"num_train_timesteps must be an integer >= 2; got {num_train_timesteps!r}")


def _check_terminal(shift_terminal: float | None, num_inference_steps: int) -> None:
    if shift_terminal is None:
        return
    if isinstance(shift_terminal, bool) or not isinstance(shift_terminal, (int, float)) or not 0 < shift_terminal < 1:
        raise KinemaError(f"shift_terminal must lie in (0, 1) (LTX-Video: 0.1); got {shift_terminal!r}")
    if num_inference_steps < 2:
        raise KinemaError("a schedule stretched to a terminal sigma needs num_inference_steps >= 2; got 1")


def unipc_flow_schedule(
    num_inference_steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> Schedule:
    """The schedule of diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift,
    final_sigmas_type="zero")`` after ``set_timesteps(num_inference_steps)``, bit for bit.

    Args:
        num_inference_steps: number of denoiser evaluations (``>= 1``).
        shift: ``flow_shift`` of the scheduler config (Wan 2.1: 3.0 at 480p, 5.0 at 720p).
        num_train_timesteps: timesteps per unit sigma the model was trained with.
    """
    _check(num_inference_steps, shift, num_train_timesteps)
    n = num_train_timesteps
    sigmas = np.linspace(1, 1 / n, num_inference_steps + 1)[:-1]  # float64, as diffusers
    sigmas = shift_sigmas(sigmas, shift)
    if np.fabs(sigmas[0] - 1) < UNIPC_SIGMA_ONE_EPS:
        sigmas[0] -= UNIPC_SIGMA_ONE_EPS
    timesteps = torch.from_numpy(sigmas * n).to(torch.int64)  # truncation, as diffusers
    sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    return Schedule(sigmas=sigmas, timesteps=timesteps)


def flow_match_euler_schedule(
    num_inference_steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift_terminal: float | None = None
) -> Schedule:
    """The schedule of diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift,
    shift_terminal=shift_terminal)`` after ``set_timesteps(num_inference_steps)``, bit for bit
    (static shift; with a terminal, stretched so that the last sigma before 0 is it).

    Args: as :func:`unipc_flow_schedule`; ``shift_terminal`` in (0, 1) or None.
    """
    _check(num_inference_steps, shift, num_train_timesteps)
    _check_terminal(shift_terminal, num_inference_steps)
    n = num_train_timesteps
    # The scheduler's training sigmas are float32 (N..1)/N, shifted; only the end points matter.
    train_ends = torch.from_numpy(np.array([n, 1], dtype=np.float32)) / n
    sigma_max, sigma_min = shift_sigmas(train_ends, shift).tolist()
    sigmas = np.linspace(sigma_max * n, sigma_min * n, num_inference_steps) / n  # float64
    sigmas = shift_sigmas(sigmas, shift)
    if shift_terminal:
        sigmas = stretch_to_terminal(sigmas, shift_terminal)
    sigmas = torch.from_numpy(sigmas).to(torch.float32)
    timesteps = sigmas * n
    return Schedule(sigmas=torch.cat([sigmas, torch.zeros(1)]), timesteps=timesteps)


def resolution_shift_mu(
    seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The log-shift ``mu`` for ``seq_len`` latent tokens: linear through ``(base_seq_len,
    base_shift)`` and ``(max_seq_len, max_shift)`` (extrapolated beyond them). diffusers'
    ``calculate_shift``, evaluated in the same order; its defaults are diffusers' (Flux's), and the
    LTX-Video scheduler config sets 1024, 4096, 0.95, 2.05. The sigmas are then shifted by
    ``exp(mu)``, so ``mu = log(shift)`` is the static shift ``shift``."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return seq_len * m + b


TIME_SHIFT_TYPES = ("exponential", "linear", "static")
"""How ``mu`` shifts the sigmas: diffusers' ``time_shift_type`` ``exp(mu) / (exp(mu) + 1/t - 1)``
(the static shift ``exp(mu)``; LTX-Video, Flux) or ``mu / (mu + 1/t - 1)`` (the static shift ``mu``),
or, for a scheduler without dynamic shifting given sigmas, its static shift itself,
``mu t / (1 + (mu - 1) t)`` in diffusers' own order of operations."""


def time_shift(sigmas: T, mu: float, kind: str = "exponential") -> T:
    """diffusers' ``_time_shift_exponential`` / ``_time_shift_linear`` with exponent 1, or its static
    shift, in the same order of operations (so float32 arrays give float32 results equal to diffusers')."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    if kind == "linear":
        return mu / (mu + (1 / sigmas - 1))
    if kind == "static":
        return mu * sigmas / (1 + (mu - 1) * sigmas)
    raise KinemaError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}; got {kind!r}")


def stretch_to_terminal(sigmas: T, terminal: float) -> T:
    """Rescale ``1 - sigma`` so that the last sigma becomes ``terminal`` (LTX-Video's
    ``strech_shifts_to_terminal``; diffusers' ``stretch_shift_to_terminal``). The first sigma, 1,
    stays 1."""
    one_minus_z = 1 - sigmas
    scale_factor = one_minus_z[-1] / (1 - terminal)
    return 1 - (one_minus_z / scale_factor)


def resolution_shift_schedule(
    num_inference_steps: int,
    mu: float,
    shift_terminal: float | None = None,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    time_shift_type: str = "exponential",
) -> Schedule:
    """LTX-Video's schedule: the sigmas diffusers' ``LTXPipeline`` passes, ``linspace(1, 1/N, N)``,
    through ``FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift_terminal=...)``'s
    ``set_timesteps(sigmas=..., mu=mu)``, bit for bit.

    Args:
        num_inference_steps: number of denoiser evaluations (``>= 1``; ``>= 2`` with a terminal,
            whose stretch divides by ``1 - sigma_last``).
        mu: the log-shift, :func:`resolution_shift_mu` of the latent token count.
        shift_terminal: the last sigma before 0 (LTX-Video: 0.1); None leaves the shifted sigmas.
        num_train_timesteps: timestep = sigma * this (float32, not rounded).
        time_shift_type: "exponential" (LTX-Video) or "linear".
    """
    _check(num_inference_steps, 1.0, num_train_timesteps)
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
        raise KinemaError(f"mu must be a finite number; got {mu!r}")
    _check_terminal(shift_terminal, num_inference_steps)
    if time_shift_type in ("linear", "static") and not mu > 0:
        raise KinemaError(f"a {time_shift_type} time shift needs mu > 0; got {mu!r}")
    sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)  # float64, as the pipeline
    sigmas = sigmas.astype(np.float32)  # the scheduler casts custom sigmas to float32
    sigmas = time_shift(sigmas, mu, time_shift_type)
    if shift_terminal:
        sigmas = stretch_to_terminal(sigmas, shift_terminal)
    sigmas = torch.from_numpy(np.asarray(sigmas)).to(torch.float32)
    timesteps = sigmas * num_train_timesteps
    return Schedule(sigmas=torch.cat([sigmas, torch.zeros(1)]), timesteps=timesteps)


def flow_sigmas(
    num_inference_steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """Wan's default sigmas (those of :func:`unipc_flow_schedule`): ``(steps + 1,)`` float32
    ending in 0."""
    return unipc_flow_schedule(num_inference_steps, shift, num_train_timesteps).sigmas


def model_timesteps(sigmas: torch.Tensor, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Float32 timesteps ``sigma * num_train_timesteps`` for each step of a custom ``(steps + 1,)``
    sigma schedule (the last sigma, the end point, gets no step). The named schedules carry their
    own :attr:`Schedule.timesteps`, which may be rounded differently; prefer those."""
    return sigmas[:-1].to(torch.float32) * num_train_timesteps


def schedule_from_sigmas(sigmas: torch.Tensor | list[float], num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """A :class:`Schedule` from explicit sigmas (descending, in [0, 1], ending in 0), with
    :func:`model_timesteps`. Raises :class:`KinemaError` if the sigmas are not such a list."""
    s = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu()
    if s.ndim != 1 or len(s) < 2:
        raise KinemaError(f"sigmas must be a 1-D list of steps + 1 >= 2 values; got shape {tuple(s.shape)}")
    if not bool(torch.all(s[1:] < s[:-1])) or float(s[0]) > 1 or float(s[-1]) != 0:
        raise KinemaError(f"sigmas must strictly decrease from <= 1 to exactly 0; got {s.tolist()}")
    return Schedule(sigmas=s, timesteps=model_timesteps(s, num_train_timesteps))


def strength_start_index(sigmas: torch.Tensor, strength: float) -> int:
    """Where a partial denoise of noise level ``strength`` starts in a ``(steps + 1,)`` schedule.

    SDEdit / video-to-video: the input is noised to a level on the schedule and sampled from there.
    Here ``strength`` is that noise level: the run starts at the first step whose sigma is at most
    ``strength`` and runs the remaining steps (``len(sigmas) - 1 - index`` of them; none when every
    step's sigma is above it, and then the input comes back unchanged). ``strength`` 1 is the whole
    schedule. (diffusers' image-to-image pipelines instead skip a fraction ``1 - strength`` of the
    steps; under a strong resolution shift that starts almost at pure noise, at a level that changes
    with the resolution.)
    """
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise KinemaError(f"strength must be in (0, 1] (the noise level the input is taken to); got {strength!r}")
    steps = sigmas[:-1]
    below = (steps <= strength).nonzero()
    return int(below[0]) if len(below) else len(steps)


def check_step_index(sigmas: torch.Tensor, index: int) -> None:
    """Raise :class:`KinemaError` unless ``0 <= index < len(sigmas) - 1`` (a step of the schedule)."""
    if sigmas.ndim != 1 or not 0 <= index < len(sigmas) - 1:
        raise KinemaError(
            f"step index {index} is outside a schedule of {len(sigmas) - 1} steps "
            f"(sigmas of shape {tuple(sigmas.shape)}); valid indices are 0..{len(sigmas) - 2}"
        )
