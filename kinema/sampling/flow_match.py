"""The Euler sampler of flow matching: one step of the flow ODE, ``x + (sigma_next - sigma) * v``.

The flow itself (interpolation, velocity target, x0 estimate, timestep map) is
:class:`kinema.sampling.noise.FlowMatching`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .schedules import Schedule, check_step_index, flow_match_euler_schedule

Scalar = float | Tensor  # a Python float or a 0-dim tensor


def euler_step(x: Tensor, velocity: Tensor, sigma: Scalar, sigma_next: Scalar) -> Tensor:
    """One Euler step of the flow ODE from ``sigma`` to ``sigma_next`` (any shape)."""
    return x + (sigma_next - sigma) * velocity


@dataclass(frozen=True)
class EulerSampler:
    """Euler over an explicit schedule: no state (``init_state()`` is ``None``).

    Matches diffusers' ``FlowMatchEulerDiscreteScheduler.step`` (the update is computed in float32
    with the float32 sigmas) except for the output dtype: diffusers casts the new sample to the
    *model output's* dtype (bf16 latents after one step of a bf16 model); this keeps ``x.dtype``.
    """

    name: str = "euler"
    default_schedule: Callable[..., Schedule] = flow_match_euler_schedule

    def init_state(self, generator: object = None) -> None:
        return None

    def step(
        self, x: Tensor, model_output: Tensor, sigmas: Tensor, index: int, state: None = None
    ) -> tuple[Tensor, None]:
        """``x`` at ``sigmas[index]`` -> ``x`` at ``sigmas[index + 1]`` given the velocity there.

        Args:
            x: the current sample, any shape; keep it float32.
            model_output: the velocity prediction at ``(x, sigmas[index])``, same shape.
            sigmas: ``(steps + 1,)`` schedule (CPU float32, as :class:`Schedule` gives).
            index: the step, ``0 <= index < steps``.
            state: ignored (Euler is memoryless); accepted for the common interface.
        """
        check_step_index(sigmas, index)
        sigmas = sigmas.detach().to("cpu", torch.float32)
        x_next = euler_step(x.to(torch.float32), model_output, sigmas[index], sigmas[index + 1])
        return x_next.to(x.dtype), None
