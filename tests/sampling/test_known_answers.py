"""Exact answers of kinema's own sampling code, with nothing to compare against: the noise
processes' formulas in closed form, samplers that land a linear flow on its data point from any
schedule, statelessness, guidance. These run without diffusers; the one comparison with diffusers'
DDPMScheduler here skips where it is not installed (the trajectory parity tests are in
test_samplers.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling import (
    DDPM,
    SAMPLERS,
    EulerSampler,
    FlowMatching,
    UniPCSampler,
    UniPCState,
    cfg,
    euler_step,
    flow_match_euler_schedule,
    sample,
    schedule_from_sigmas,
    unipc_flow_schedule,
    unipc_step,
)
from tests.sampling.common import SHAPE, fake_velocity, kinema_trajectory, start_noise

FLOW = FlowMatching()


def _data_and_noise(dtype: torch.dtype = torch.float32, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    shape = (batch, *SHAPE[1:])
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def _per_sample(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))


# ---------------------------------------------------------------------------------------------
# Flow matching: x = (1 - sigma) x0 + sigma noise, velocity noise - x0
# ---------------------------------------------------------------------------------------------


def test_flow_matching_interpolates_data_and_noise() -> None:
    data, noise = _data_and_noise()
    assert torch.equal(FLOW.add_noise(data, noise, 0.0), data)
    assert torch.equal(FLOW.add_noise(data, noise, 1.0), noise)
    assert torch.equal(FLOW.add_noise(data, noise, 0.25), 0.75 * data + 0.25 * noise)
    sigmas = [0.0, 0.25, 0.8, 1.0]  # one per sample
    want = (1 - _per_sample(sigmas, data)) * data + _per_sample(sigmas, data) * noise
    torch.testing.assert_close(FLOW.add_noise(data, noise, torch.tensor(sigmas)), want, rtol=0, atol=1e-7)
    alpha, sigma = FLOW.alpha_sigma(0.3)
    assert (alpha, sigma) == (0.7, 0.3)
    torch.testing.assert_close(FLOW.add_noise(data, noise, 0.3), alpha * data + sigma * noise, rtol=0, atol=1e-7)
    assert FLOW.clean_level == 0.0 and FLOW.name == "flow-matching"


def test_flow_matching_target_is_the_velocity_of_the_path() -> None:
    data, noise = _data_and_noise(torch.float64)
    v = FLOW.target(data, noise, 0.4)
    assert torch.equal(v, noise - data) and torch.equal(FLOW.target(data, noise, 0.9), v)  # the same at every level
    slope = (FLOW.add_noise(data, noise, 0.6) - FLOW.add_noise(data, noise, 0.2)) / 0.4
    torch.testing.assert_close(slope, v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 0.95, "per-sample"])
def test_flow_matching_x0_and_velocity_convert_both_ways(sigma) -> None:
    data, noise = _data_and_noise(torch.float64)
    s = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64) if sigma == "per-sample" else sigma
    x = FLOW.add_noise(data, noise, s)
    v = FLOW.target(data, noise, s)
    torch.testing.assert_close(FLOW.predict_x0(x, v, s), data, rtol=0, atol=1e-12)  # velocity -> x0
    s_b = _per_sample(s.tolist(), x) if sigma == "per-sample" else s
    torch.testing.assert_close((x - data) / s_b, v, rtol=0, atol=1e-12)  # x0 -> velocity
    torch.testing.assert_close((x - (1 - s_b) * data) / s_b, noise, rtol=0, atol=1e-12)  # x0 -> noise


def test_flow_matching_timesteps_and_training_levels() -> None:
    assert FLOW.model_timestep(0.25) == 250.0
    assert torch.equal(FlowMatching(num_train_timesteps=500).model_timestep(torch.tensor([0.5, 1.0])), torch.tensor([250.0, 500.0]))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    uniform = FlowMatching(sigma_sampling="uniform").training_levels(gens())
    assert torch.equal(uniform, torch.stack([torch.rand((), generator=g) for g in gens()]))
    shifted = FlowMatching(logit_mean=0.5, logit_std=2.0).training_levels(gens())
    assert torch.equal(shifted, torch.stack([torch.sigmoid(torch.randn((), generator=g) * 2.0 + 0.5) for g in gens()]))
    for levels in (uniform, shifted):
        assert levels.shape == (3,) and levels.dtype == torch.float32 and bool(((levels > 0) & (levels < 1)).all())
    with pytest.raises(KinemaError, match="sigma_sampling"):
        FlowMatching(sigma_sampling="cosine")


# ---------------------------------------------------------------------------------------------
# DDPM: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
# ---------------------------------------------------------------------------------------------
TIMESTEPS = [0, 10, 500, 999]  # one per sample: the cleanest, early, middle and the noisiest level


def _alphas_cumprod(p: DDPM) -> list[float]:
    """abar_t = prod_{s <= t} (1 - beta_s), in double precision from the betas' definition."""
    n, out, prod = p.num_train_timesteps, [], 1.0
    lo, hi = (p.beta_start, p.beta_end) if p.beta_schedule == "linear" else (p.beta_start**0.5, p.beta_end**0.5)
    for s in range(n):
        beta = lo + (hi - lo) * s / (n - 1)
        prod *= 1 - (beta if p.beta_schedule == "linear" else beta**2)
        out.append(prod)
    return out


@pytest.mark.parametrize("p", [DDPM(), DDPM(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"), DDPM(num_train_timesteps=50)],
                         ids=["linear", "scaled-linear", "50-steps"])  # fmt: skip
def test_ddpm_alphas_cumprod_is_the_running_product(p: DDPM) -> None:
    want = torch.tensor(_alphas_cumprod(p), dtype=torch.float64)
    assert p.betas.shape == p.alphas_cumprod.shape == (p.num_train_timesteps,) and p.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(p.alphas_cumprod.double(), want, rtol=2e-5, atol=0)
    assert float(p.betas[0]) == pytest.approx(p.beta_start) and float(p.betas[-1]) == pytest.approx(p.beta_end)
    assert bool((p.alphas_cumprod[1:] < p.alphas_cumprod[:-1]).all())  # noisier at every step


def test_ddpm_add_noise_is_the_closed_form() -> None:
    p = DDPM()
    abar = _alphas_cumprod(p)
    data, noise = _data_and_noise()
    got = p.add_noise(data, noise, torch.tensor(TIMESTEPS))
    for i, t in enumerate(TIMESTEPS):
        want = math.sqrt(abar[t]) * data[i].double() + math.sqrt(1 - abar[t]) * noise[i].double()
        torch.testing.assert_close(got[i].double(), want, rtol=0, atol=2e-5)
        # a scalar level, a 0-dim tensor and an integer give the same
        assert torch.equal(p.add_noise(data[i : i + 1], noise[i : i + 1], t)[0], got[i])
        assert torch.equal(p.add_noise(data[i : i + 1], noise[i : i + 1], torch.tensor(t))[0], got[i])
    alpha, sigma = p.alpha_sigma(500)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.tensor(1.0))
    torch.testing.assert_close(float(alpha), math.sqrt(abar[500]), rtol=1e-5, atol=0)
    torch.testing.assert_close(p.add_noise(data, noise, 500), alpha * data + sigma * noise, rtol=0, atol=1e-6)
    assert p.clean_level == 0.0 and p.name == "ddpm"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_predictions_convert_back_to_x0(prediction_type: str) -> None:
    p = DDPM(prediction_type=prediction_type)
    data, noise = _data_and_noise(torch.float64)
    t = torch.tensor(TIMESTEPS)
    x_t = p.add_noise(data, noise, t)
    out = p.target(data, noise, t)
    alpha, sigma = (_per_sample(v.tolist(), data) for v in p.alpha_sigma(t))
    want = {"epsilon": noise, "sample": data, "v_prediction": alpha * noise - sigma * data}[prediction_type]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    # exact but for alpha^2 + sigma^2 = 1, which the float32 scales meet to float32 rounding
    torch.testing.assert_close(p.predict_x0(x_t, out, t), data, rtol=0, atol=1e-6)
    if prediction_type == "v_prediction":  # and the noise back from v: alpha v + sigma x_t
        torch.testing.assert_close(alpha * out + sigma * x_t, noise, rtol=0, atol=1e-6)


def test_ddpm_levels_are_integer_timesteps() -> None:
    p = DDPM()
    assert p.model_timestep(7) == 7
    t = torch.tensor([3, 999])
    assert p.model_timestep(t) is t
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    levels = p.training_levels(gens())
    assert levels.dtype == torch.int64 and bool(((levels >= 0) & (levels < 1000)).all())
    assert torch.equal(levels, torch.stack([torch.randint(1000, (), generator=g) for g in gens()]))
    data, noise = _data_and_noise()
    for bad in (0.5, -1, 1000, torch.tensor([0.5, 1.0]), torch.tensor([0, 1000, 1, 2])):
        with pytest.raises(KinemaError, match=r"integer timesteps in \[0, 1000\)"):
            p.add_noise(data, noise, bad)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_train_timesteps=1), dict(num_train_timesteps=True), dict(num_train_timesteps=1000.0),
     dict(prediction_type="flow"), dict(beta_schedule="cosine"), dict(beta_start=0.03), dict(beta_end=1.0),
     dict(beta_start=0.0)],
)  # fmt: skip
def test_bad_ddpm_settings_raise(kwargs: dict) -> None:
    with pytest.raises(KinemaError):
        DDPM(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(prediction_type="v_prediction"), dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
     dict(num_train_timesteps=100, prediction_type="sample")],
    ids=["epsilon", "v", "scaled-linear", "100-steps-sample"],
)  # fmt: skip
def test_ddpm_equals_diffusers_ddpm_scheduler(diffusers, kwargs: dict) -> None:
    p = DDPM(**kwargs)
    ref = diffusers.DDPMScheduler(**{k: getattr(p, k) for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")},
                                  clip_sample=False)  # fmt: skip
    assert torch.equal(p.betas, ref.betas) and torch.equal(p.alphas_cumprod, ref.alphas_cumprod)
    data, noise = _data_and_noise()
    t = torch.tensor([0, 10, p.num_train_timesteps // 2, p.num_train_timesteps - 1])
    torch.testing.assert_close(p.add_noise(data, noise, t), ref.add_noise(data, noise, t), rtol=0, atol=1e-6)
    if p.prediction_type == "v_prediction":
        torch.testing.assert_close(p.target(data, noise, t), ref.get_velocity(data, noise, t), rtol=0, atol=1e-6)
    for i, level in enumerate(t.tolist()):  # the x0 estimate of diffusers' DDPM step from the same prediction
        x_t, out = p.add_noise(data[i : i + 1], noise[i : i + 1], level), p.target(data[i : i + 1], noise[i : i + 1], level)
        step = ref.step(out, level, x_t, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(p.predict_x0(x_t, out, level), step.pred_original_sample, rtol=1e-5, atol=1e-5)


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


def test_euler_step_is_exact_on_a_straight_path() -> None:
    data, noise = start_noise(1), start_noise(2)
    x = FLOW.add_noise(data, noise, 0.25)
    torch.testing.assert_close(euler_step(x, noise - data, 0.25, 0.0), data)
    torch.testing.assert_close(euler_step(x, noise - data, 0.25, 1.0), noise)
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
