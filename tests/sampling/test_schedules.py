"""Sigma schedules: value-for-value equal to diffusers' schedulers (those tests skip without
diffusers), and their invariants and known values (which need no diffusers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling.schedules import (
    Schedule,
    check_step_index,
    flow_match_euler_schedule,
    flow_sigmas,
    model_timesteps,
    schedule_from_sigmas,
    shift_sigmas,
    unipc_flow_schedule,
)

STEPS = [1, 2, 3, 10, 50]
SHIFTS = [1.0, 3.0, 5.0, 8.0, 3.7]


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_unipc_schedule_equals_diffusers(diffusers, steps: int, shift: float) -> None:
    ref = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    ref.set_timesteps(steps)
    ours = unipc_flow_schedule(steps, shift=shift)
    assert ours.sigmas.dtype == ref.sigmas.dtype == torch.float32
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.int64
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(flow_sigmas(steps, shift=shift), ref.sigmas)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_flow_match_euler_schedule_equals_diffusers(diffusers, steps: int, shift: float) -> None:
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    ours = flow_match_euler_schedule(steps, shift=shift)
    assert ours.sigmas.dtype == ref.sigmas.dtype == torch.float32
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.float32
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)


@pytest.mark.parametrize("num_train_timesteps", [500, 1000])
def test_other_num_train_timesteps_equal_diffusers(diffusers, num_train_timesteps: int) -> None:
    unipc = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
        num_train_timesteps=num_train_timesteps,
    )  # fmt: skip
    unipc.set_timesteps(20)
    ours = unipc_flow_schedule(20, 5.0, num_train_timesteps)
    assert torch.equal(ours.sigmas, unipc.sigmas) and torch.equal(ours.timesteps, unipc.timesteps)
    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0, num_train_timesteps=num_train_timesteps)
    euler.set_timesteps(20)
    ours = flow_match_euler_schedule(20, 5.0, num_train_timesteps)
    assert torch.equal(ours.sigmas, euler.sigmas) and torch.equal(ours.timesteps, euler.timesteps)


@pytest.mark.parametrize("make", [unipc_flow_schedule, flow_match_euler_schedule])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_schedule_invariants(make, steps: int) -> None:
    s = make(steps, shift=5.0)
    assert isinstance(s, Schedule) and s.num_steps == steps
    assert s.sigmas.shape == (steps + 1,) and s.timesteps.shape == (steps,)
    assert s.sigmas.device.type == "cpu" and s.sigmas.dtype == torch.float32
    assert float(s.sigmas[-1]) == 0.0 and float(s.sigmas[0]) <= 1.0
    assert bool(torch.all(s.sigmas[1:] < s.sigmas[:-1]))


def test_unipc_first_sigma_is_pulled_below_one() -> None:
    # log-SNR is -inf at sigma 1; diffusers subtracts 1e-6 (in float64, then rounds to float32).
    s = unipc_flow_schedule(10, shift=3.0)
    assert float(s.sigmas[0]) == float(np.float32(1 - 1e-6))
    assert int(s.timesteps[0]) == 999  # int(999.999) truncates, as diffusers
    assert float(flow_match_euler_schedule(10, shift=3.0).sigmas[0]) == 1.0


def test_the_two_schedules_differ_as_diffusers_does() -> None:
    # UniPC: linspace(1, 1/N, steps + 1) without its last point, shifted once. Euler: linspace
    # from 1 to the shifted 1/N *with* its last point (a last step from nearly 0 to 0), shifted
    # again. With few steps they differ a lot, even at shift 1.
    unipc, euler = unipc_flow_schedule(4, 1.0).sigmas, flow_match_euler_schedule(4, 1.0).sigmas
    torch.testing.assert_close(unipc, torch.tensor([1 - 1e-6, 0.75025, 0.5005, 0.25075, 0.0]))
    torch.testing.assert_close(euler, torch.tensor([1.0, 0.667, 0.334, 0.001, 0.0]))
    euler3 = flow_match_euler_schedule(4, 3.0).sigmas
    assert float(euler3[-2]) == pytest.approx(shift_sigmas(shift_sigmas(1e-3, 3.0), 3.0), rel=1e-6)


def test_shift_sigmas_properties() -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.equal(shift_sigmas(t, 1.0), t)
    for s in (0.5, 3.0, 5.0, 8.0):
        out = shift_sigmas(t, s)
        assert float(out[0]) == 0.0 and float(out[-1]) == 1.0
        assert bool(torch.all(out[1:] > out[:-1]))
        # the shift multiplies the odds sigma / (1 - sigma) by s
        odds_in, odds_out = t[1:-1] / (1 - t[1:-1]), out[1:-1] / (1 - out[1:-1])
        torch.testing.assert_close(odds_out, s * odds_in)
    # so shifts compose by multiplication
    torch.testing.assert_close(shift_sigmas(shift_sigmas(t, 2.0), 2.5), shift_sigmas(t, 5.0))
    # floats, numpy and tensors alike
    assert shift_sigmas(0.5, 3.0) == 0.75
    np.testing.assert_array_equal(shift_sigmas(np.array([0.5]), 3.0), [0.75])


def test_model_timesteps_and_custom_schedules() -> None:
    s = schedule_from_sigmas([1.0, 0.75, 0.5, 0.0])
    assert torch.equal(s.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.0]))
    assert torch.equal(s.timesteps, torch.tensor([1000.0, 750.0, 500.0]))
    assert torch.equal(model_timesteps(s.sigmas, 500), torch.tensor([500.0, 375.0, 250.0]))
    euler = flow_match_euler_schedule(10, 5.0)
    assert torch.equal(model_timesteps(euler.sigmas), euler.timesteps)


@pytest.mark.parametrize(
    "bad", [[0.5], [1.0, 0.5], [0.5, 0.7, 0.0], [1.5, 0.5, 0.0], [[1.0, 0.0]], [1.0, 0.5, 0.5, 0.0]]
)
def test_schedule_from_sigmas_rejects_bad_lists(bad) -> None:
    with pytest.raises(KinemaError):
        schedule_from_sigmas(bad)


@pytest.mark.parametrize("make", [unipc_flow_schedule, flow_match_euler_schedule])
@pytest.mark.parametrize(
    "kwargs", [dict(num_inference_steps=0), dict(num_inference_steps=2.0), dict(shift=0.0), dict(shift=-1.0),
               dict(num_train_timesteps=1)],
)  # fmt: skip
def test_bad_schedule_arguments_raise(make, kwargs) -> None:
    args = dict(num_inference_steps=10, shift=3.0, num_train_timesteps=1000) | kwargs
    with pytest.raises(KinemaError):
        make(**args)


def test_check_step_index() -> None:
    sigmas = unipc_flow_schedule(3).sigmas
    for i in range(3):
        check_step_index(sigmas, i)
    for i in (-1, 3, 4):
        with pytest.raises(KinemaError, match="outside a schedule of 3 steps"):
            check_step_index(sigmas, i)
