"""Samplers: whole trajectories against diffusers' schedulers, exact answers, statelessness,
guidance, and building from a diffusers ``scheduler_config.json``."""

from __future__ import annotations

import copy

import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling import FlowMatching
from kinema.sampling import (
    SAMPLERS,
    EulerSampler,
    SamplerSpec,
    UniPCSampler,
    UniPCState,
    cfg,
    euler_step,
    flow_match_euler_schedule,
    sample,
    sampling_from_scheduler_config,
    schedule_from_sigmas,
    unipc_flow_schedule,
    unipc_step,
)

diffusers = pytest.importorskip("diffusers")
FLOW = FlowMatching()

SHAPE = (2, 4, 3, 5, 6)  # (B, C, F, H, W): a tiny video latent
TOL = 1e-5  # fp32 trajectories must agree with diffusers to this (they agree to the bit today)

# Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (480p: flow_shift 3.0).
WAN_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler",
    "_diffusers_version": "0.33.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "predict_x0": True,
    "prediction_type": "flow_prediction",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_p": None,
    "solver_type": "bh2",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}


def fake_velocity(x: torch.Tensor, i: int) -> torch.Tensor:
    """A deterministic stand-in for the denoiser: depends on x and, through a seeded draw, on the step."""
    g = torch.Generator().manual_seed(1000 + i)
    return 0.3 * torch.tanh(x) + torch.randn(x.shape, generator=g)


def start_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def diffusers_trajectory(scheduler, steps: int) -> list[torch.Tensor]:
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    x, out = start_noise(), []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(fake_velocity(x, i), t, x).prev_sample
        out.append(x)
    return out


def kinema_trajectory(sampler, sigmas: torch.Tensor) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    sample(fake_velocity, start_noise(), sigmas, sampler, callback=lambda i, x: out.append(x))
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


def test_sampler_spec_overrides() -> None:
    spec = SamplerSpec.from_diffusers(WAN_SCHEDULER_CONFIG | {"solver_order": 3})
    assert spec.get_sampler() == UniPCSampler(order=3)
    assert spec.with_overrides() is spec
    shifted = spec.with_overrides(shift=5)
    assert shifted.shift == 5.0 and shifted.get_sampler() == UniPCSampler(order=3)  # settings kept
    assert torch.equal(shifted.schedule(20).sigmas, unipc_flow_schedule(20, 5.0).sigmas)
    assert spec.with_overrides(name="unipc").get_sampler() == UniPCSampler(order=3)
    euler = spec.with_overrides(name="euler")
    sampler, sigmas, _ = euler.build(20)
    assert sampler == EulerSampler() and torch.equal(sigmas, flow_match_euler_schedule(20, 3.0).sigmas)
    assert euler.with_overrides(name="unipc").get_sampler() == UniPCSampler()  # registry defaults
    for bad in (dict(name="ddim"), dict(shift=0.0), dict(shift=True)):
        with pytest.raises(KinemaError):
            spec.with_overrides(**bad)
    with pytest.raises(KinemaError):
        SamplerSpec("euler", sampler=UniPCSampler())
    with pytest.raises(KinemaError):
        SamplerSpec("unipc", num_train_timesteps=1)
    _, sigmas, timesteps = SamplerSpec("unipc", 5.0).build(10, device="cpu")
    assert sigmas.device.type == "cpu" and timesteps.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Known exact answers: a linear flow ends on its data point from any schedule
# ---------------------------------------------------------------------------------------------

SCHEDULES = {
    "unipc": lambda n: unipc_flow_schedule(n, 5.0).sigmas,
    "euler": lambda n: flow_match_euler_schedule(n, 3.0).sigmas,  # starts at exactly 1
    "custom": lambda n: schedule_from_sigmas(torch.linspace(0.98, 0, n + 1) ** 2).sigmas,
}
SAMPLER_VARIANTS = {
    "euler": EulerSampler(),
    "unipc1": UniPCSampler(order=1),
    "unipc2": UniPCSampler(),
    "unipc3": UniPCSampler(order=3),
    "unipc3-bh1": UniPCSampler(order=3, solver_type="bh1"),
}


# UniPC refuses a schedule that starts at exactly sigma 1 (test_unipc_refuses_sigma_one).
LINEAR_FLOW_CASES = [
    pytest.param(sampler, schedule, id=f"{sampler_id}-{schedule_id}")
    for sampler_id, sampler in SAMPLER_VARIANTS.items()
    for schedule_id, schedule in SCHEDULES.items()
    if not (isinstance(sampler, UniPCSampler) and schedule_id == "euler")
]


@pytest.mark.parametrize("sampler, schedule", LINEAR_FLOW_CASES)
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50])
def test_linear_flow_lands_on_data(sampler, schedule, steps: int) -> None:
    data, noise = start_noise(1), start_noise(2)
    sigmas = schedule(steps)
    # 1) the exact velocity of the straight path, starting on the path
    x = FLOW.add_noise(data, noise, sigmas[0])
    out = sample(lambda x, i: noise - data, x, sigmas, sampler)
    torch.testing.assert_close(out, data, atol=1e-5, rtol=0)
    # 2) the velocity field of a point mass at `data`, v = (x - data) / sigma, from anywhere
    out = sample(lambda x, i: (x - data) / sigmas[i], start_noise(3), sigmas, sampler)
    torch.testing.assert_close(out, data, atol=1e-5, rtol=0)


def test_unipc_refuses_sigma_one() -> None:
    # log-SNR is -inf at sigma 1: diffusers' UniPC gives NaN there for bh1 or order 3.
    sigmas = flow_match_euler_schedule(10, 3.0).sigmas
    with pytest.raises(KinemaError, match="0 < sigma < 1"):
        sample(fake_velocity, start_noise(), sigmas, UniPCSampler())


def test_flow_helpers() -> None:
    data, noise = start_noise(1), start_noise(2)
    x = FLOW.add_noise(data, noise, 0.25)
    torch.testing.assert_close(FLOW.predict_x0(x, FLOW.target(data, noise), 0.25), data)
    torch.testing.assert_close(euler_step(x, noise - data, 0.25, 0.0), data)
    assert torch.equal(euler_step(x, noise, 0.5, 0.5), x)


# ---------------------------------------------------------------------------------------------
# Statelessness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS.keys())
def test_sampling_twice_gives_identical_trajectories(name: str) -> None:
    sampler = SAMPLERS[name]
    sigmas = sampler.default_schedule(12, 5.0).sigmas
    first, second = kinema_trajectory(sampler, sigmas), kinema_trajectory(sampler, sigmas)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_unipc_step_is_pure() -> None:
    sigmas = unipc_flow_schedule(8, 5.0).sigmas
    x, state = start_noise(), UniPCState()
    for i in range(4):  # get into the multistep regime (history of 2, corrector on)
        x, state = unipc_step(x, fake_velocity(x, i), sigmas, i, state)
    v = fake_velocity(x, 4)
    x_before, v_before, state_before = x.clone(), v.clone(), copy.deepcopy(state)
    a, state_a = unipc_step(x, v, sigmas, 4, state)
    b, state_b = unipc_step(x, v, sigmas, 4, state)
    assert torch.equal(a, b)
    assert all(torch.equal(p, q) for p, q in zip(state_a.x0_history, state_b.x0_history))
    assert torch.equal(state_a.last_sample, state_b.last_sample)
    # nothing it was given has changed
    assert torch.equal(x, x_before) and torch.equal(v, v_before)
    assert all(torch.equal(p, q) for p, q in zip(state.x0_history, state_before.x0_history))
    assert torch.equal(state.last_sample, state_before.last_sample)
    assert (state.last_order, state.last_index) == (state_before.last_order, state_before.last_index)


def test_unipc_resumes_from_a_saved_state() -> None:
    sigmas = unipc_flow_schedule(10, 3.0).sigmas
    sampler = UniPCSampler()
    x, state, saved = start_noise(), sampler.init_state(), {}
    for i in range(10):
        if i == 6:
            saved = {"x": x, "state": state}
        x, state = sampler.step(x, fake_velocity(x, i), sigmas, i, state)
    y, state = saved["x"], saved["state"]
    for i in range(6, 10):
        y, state = sampler.step(y, fake_velocity(y, i), sigmas, i, state)
    assert torch.equal(x, y)


def test_unipc_state_from_another_step_raises() -> None:
    sigmas = unipc_flow_schedule(5).sigmas
    x = start_noise()
    _, state = unipc_step(x, fake_velocity(x, 0), sigmas, 0, UniPCState())
    with pytest.raises(KinemaError, match="state comes from step 0 but this is step 2"):
        unipc_step(x, fake_velocity(x, 2), sigmas, 2, state)
    with pytest.raises(KinemaError, match="outside a schedule"):
        unipc_step(x, fake_velocity(x, 0), sigmas, 5, UniPCState())


def test_unipc_refuses_multistep_into_sigma_zero() -> None:
    sigmas = unipc_flow_schedule(3).sigmas
    sampler = UniPCSampler(order=2, lower_order_final=False)
    with pytest.raises(KinemaError, match="lower_order_final"):
        sample(fake_velocity, start_noise(), sigmas, sampler)


def test_euler_keeps_sample_dtype_and_ignores_state() -> None:
    sigmas = flow_match_euler_schedule(4).sigmas
    x = start_noise()
    out, state = SAMPLERS["euler"].step(x, fake_velocity(x, 0).bfloat16(), sigmas, 0, None)
    assert out.dtype == torch.float32 and state is None


def test_sampler_registry_has_one_interface() -> None:
    assert set(SAMPLERS) == {"euler", "unipc"}
    assert SAMPLERS["unipc"].default_schedule is unipc_flow_schedule
    assert SAMPLERS["euler"].default_schedule is flow_match_euler_schedule
    for name, sampler in SAMPLERS.items():
        assert sampler.name == name
        sigmas = sampler.default_schedule(3, 3.0).sigmas
        out = sample(fake_velocity, start_noise(), sigmas, sampler, progress=False)
        assert out.shape == SHAPE and out.dtype == torch.float32 and bool(torch.isfinite(out).all())


def test_sample_calls_back_each_step() -> None:
    seen: list[int] = []
    sample(fake_velocity, start_noise(), unipc_flow_schedule(5).sigmas, SAMPLERS["unipc"],
           callback=lambda i, x: seen.append(i))  # fmt: skip
    assert seen == [0, 1, 2, 3, 4]


def test_bad_unipc_settings_raise() -> None:
    with pytest.raises(KinemaError):
        UniPCSampler(order=0)
    with pytest.raises(KinemaError):
        UniPCSampler(solver_type="midpoint")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------


def test_cfg() -> None:
    uncond, cond = start_noise(1), start_noise(2)
    assert torch.equal(cfg(uncond, cond, 1.0), cond)
    assert torch.equal(cfg(uncond, cond, 1), cond)
    assert torch.equal(cfg(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(cfg(uncond, cond, 5.0), uncond + 5.0 * (cond - uncond), atol=0, rtol=0)
    torch.testing.assert_close(cfg(uncond, cond, 5.0), 5.0 * cond - 4.0 * uncond)


# ---------------------------------------------------------------------------------------------
# Scheduler configs kinema must refuse (results would silently differ otherwise)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"use_karras_sigmas": True},
        {"use_exponential_sigmas": True},
        {"use_beta_sigmas": True},
        {"prediction_type": "epsilon"},
        {"prediction_type": "v_prediction"},
        {"use_flow_sigmas": False},
        {"predict_x0": False},
        {"thresholding": True},
        {"use_dynamic_shifting": True},
        {"final_sigmas_type": "sigma_min"},
        {"shift_terminal": 0.1},
        {"lower_order_final": False},
        {"solver_type": "bh3"},
        {"solver_order": 0},
        {"flow_shift": -1.0},
        {"num_train_timesteps": "1000"},
        {"some_future_option": True},
        {"_class_name": "DDIMScheduler"},
    ],
    ids=lambda c: next(iter(c)) + "=" + str(next(iter(c.values()))),
)
def test_unsupported_scheduler_configs_raise(change: dict) -> None:
    with pytest.raises(KinemaError):
        sampling_from_scheduler_config(WAN_SCHEDULER_CONFIG | change)


def test_missing_keys_take_diffusers_defaults() -> None:
    # UniPC's default prediction_type is epsilon: a config without it is not a flow model's.
    config = {k: v for k, v in WAN_SCHEDULER_CONFIG.items() if k != "prediction_type"}
    with pytest.raises(KinemaError, match="prediction_type='epsilon'"):
        sampling_from_scheduler_config(config)
    minimal = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
               "use_flow_sigmas": True, "flow_shift": 5.0}  # fmt: skip
    assert sampling_from_scheduler_config(minimal) == SamplerSpec("unipc", 5.0, 1000)
    euler = sampling_from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    assert euler == SamplerSpec("euler", 1.0, 1000)


def test_accepted_equivalent_settings() -> None:
    # diffusers treats a falsy shift_terminal as off, and maps legacy solver names to bh2.
    setup = sampling_from_scheduler_config(WAN_SCHEDULER_CONFIG | {"shift_terminal": 0, "solver_type": "midpoint"})
    assert setup.get_sampler() == UniPCSampler()
    order1 = sampling_from_scheduler_config(WAN_SCHEDULER_CONFIG | {"solver_order": 1, "lower_order_final": False})
    assert order1.get_sampler() == UniPCSampler(order=1, lower_order_final=False)


@pytest.mark.parametrize(
    "change", [{"invert_sigmas": True}, {"stochastic_sampling": True}, {"use_karras_sigmas": True},
               {"flow_shift": 3.0}, {"use_dynamic_shifting": True, "time_shift_type": "cubic"}],
)  # fmt: skip
def test_unsupported_euler_configs_raise(change: dict) -> None:
    with pytest.raises(KinemaError):
        sampling_from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0} | change)
