"""Samplers against diffusers' schedulers: whole trajectories, and the trajectories of diffusers
``scheduler_config.json`` files. Exact answers and statelessness, which need no diffusers, are in
test_known_answers.py; reading scheduler configs in test_scheduler_configs.py."""

from __future__ import annotations

import pytest
import torch

from kinema.sampling import (
    SAMPLERS,
    EulerSampler,
    SamplerSpec,
    UniPCSampler,
    flow_match_euler_schedule,
    sampling_from_scheduler_config,
    unipc_flow_schedule,
)
from tests.sampling.common import (
    WAN_SCHEDULER_CONFIG,
    fake_velocity,
    kinema_trajectory,
    start_noise,
)

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # fp32 trajectories must agree with diffusers to this (they agree to the bit today)


def diffusers_trajectory(scheduler, steps: int) -> list[torch.Tensor]:
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    x, out = start_noise(), []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(fake_velocity(x, i), t, x).prev_sample
        out.append(x)
    return out


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# Parity with diffusers, whole trajectories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 50])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_unipc_matches_diffusers(steps: int, order: int, shift: float) -> None:
    ref = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=order
    )
    expected = diffusers_trajectory(ref, steps)
    ours = kinema_trajectory(UniPCSampler(order=order), unipc_flow_schedule(steps, shift).sigmas)
    assert max_diff(ours, expected) <= TOL


@pytest.mark.parametrize("steps", [3, 10])
def test_unipc_bh1_and_disabled_corrector_match_diffusers(steps: int) -> None:
    ref = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
        solver_type="bh1", solver_order=3, disable_corrector=[0, 2],
    )  # fmt: skip
    expected = diffusers_trajectory(ref, steps)
    sampler = UniPCSampler(order=3, solver_type="bh1", disable_corrector=frozenset({0, 2}))
    assert max_diff(kinema_trajectory(sampler, unipc_flow_schedule(steps, 3.0).sigmas), expected) <= TOL


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_euler_matches_diffusers(steps: int, shift: float) -> None:
    expected = diffusers_trajectory(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), steps)
    ours = kinema_trajectory(SAMPLERS["euler"], flow_match_euler_schedule(steps, shift).sigmas)
    assert max_diff(ours, expected) <= TOL


@pytest.mark.parametrize("steps", [2, 25])
def test_wan_scheduler_config_gives_diffusers_trajectory(steps: int) -> None:
    ref = diffusers.UniPCMultistepScheduler.from_config(WAN_SCHEDULER_CONFIG)
    expected = diffusers_trajectory(ref, steps)
    spec = SamplerSpec.from_diffusers(WAN_SCHEDULER_CONFIG)
    assert spec == SamplerSpec("unipc", shift=3.0, num_train_timesteps=1000)
    sampler, sigmas, timesteps = spec.build(steps)
    assert sampler == UniPCSampler()
    assert torch.equal(timesteps, ref.timesteps) and torch.equal(sigmas, ref.sigmas)
    assert max_diff(kinema_trajectory(sampler, sigmas), expected) <= TOL


def test_euler_scheduler_config_gives_diffusers_trajectory() -> None:
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 5.0, "num_train_timesteps": 1000,
              "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15}  # fmt: skip
    ref = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    expected = diffusers_trajectory(ref, 10)
    spec = sampling_from_scheduler_config(config)
    assert spec == SamplerSpec("euler", shift=5.0)
    sampler, sigmas, timesteps = spec.build(10)
    assert isinstance(sampler, EulerSampler) and torch.equal(timesteps, ref.timesteps)
    assert max_diff(kinema_trajectory(sampler, sigmas), expected) <= TOL
