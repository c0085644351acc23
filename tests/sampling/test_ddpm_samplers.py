"""DDPM and DDIM on the noise-process seam: diffusers' timesteps, exact answers with an oracle
denoiser, statelessness, and whole trajectories equal to diffusers' DDPMScheduler and
DDIMScheduler on the same model outputs and noise (the comparisons skip without diffusers)."""

from __future__ import annotations

import math

import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling import (
    DDPM,
    DDIMSampler,
    DDPMSampler,
    DiscreteSamplerSpec,
    discrete_timesteps,
    sample,
    sampling_from_scheduler_config,
)
from kinema.sampling.ddpm import draw_noise

SHAPE = (2, 3, 4, 8, 8)  # (B, C, F, H, W): a tiny pixel video


def stand_in(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic function of the sample and the timestep, standing in for a denoiser."""
    return 0.6 * torch.tanh(x) + 0.1 * math.sin(float(t) / 97.0)


# ------------------------------------------------------------------------------------------------
# Exact answers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spacing, steps, expected",
    [
        ("leading", 4, [750, 500, 250, 0]),
        ("trailing", 4, [999, 749, 499, 249]),
        ("linspace", 4, [999, 666, 333, 0]),
        ("leading", 1, [0]),
        ("trailing", 1, [999]),
    ],
)
def test_timesteps_follow_the_spacing_rules(spacing, steps, expected):
    assert discrete_timesteps(steps, 1000, spacing).tolist() == expected


def test_leading_spacing_takes_the_offset():
    assert discrete_timesteps(4, 1000, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_an_oracle_denoiser_brings_back_the_clean_sample(name, prediction):
    """With the model's output equal to the truth for a known x0, DDIM (eta 0) lands on x0 and DDPM's
    last step (to the clean level, no noise) returns x0 exactly as estimated."""
    process = DDPM(prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(SHAPE, generator=g) * 1.6 - 0.8  # inside the clip range
    noise = torch.randn(SHAPE, generator=g)
    spec = DiscreteSamplerSpec(name, process)
    sampler, levels, timesteps = spec.build(10)
    acp = process.alphas_cumprod.double()

    def oracle(x, i):
        t = int(timesteps[i])
        a, s = acp[t].sqrt(), (1 - acp[t]).sqrt()
        eps = ((x.double() - a * x0.double()) / s).float()
        return {"epsilon": eps, "sample": x0, "v_prediction": (a * eps.double() - s * x0.double()).float()}[prediction]

    x = process.add_noise(x0, noise, int(timesteps[0]))
    out = sample(oracle, x, levels, sampler, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_keeps_an_oracle_on_the_forward_path(spacing):
    """At eta 0, DDIM with the true noise as the model's output moves x_t to exactly
    sqrt(abar_prev) x0 + sqrt(1 - abar_prev) noise, at t - N // steps, step after step. (With
    "linspace" spacing diffusers' DDIM also lands at t - N // steps, which is not the next timestep
    the model is told: the parity test below holds kinema to that.)"""
    process = DDPM()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(SHAPE, generator=g) * 1.6 - 0.8, torch.randn(SHAPE, generator=g)
    sampler, levels, timesteps = DiscreteSamplerSpec("ddim", process, timestep_spacing=spacing, clip_sample=False).build(8)
    acp = process.alphas_cumprod.double()
    x = process.add_noise(x0, noise, int(timesteps[0]))
    for i, t in enumerate(timesteps.tolist()):
        x, _ = sampler.step(x, noise, levels, i)
        prev = t - 1000 // 8
        a = acp[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        expected = (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).float()
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-4)


def test_ddpm_step_is_the_gaussian_posterior():
    """One DDPM step from t to t' is the posterior q(x_t' | x_t, x0) of the forward process, its mean
    and (fixed_small) variance computed here from the betas in float64, the noise from the generator."""
    process = DDPM()
    betas = process.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.rand(SHAPE, generator=g) * 1.6 - 0.8, torch.randn(SHAPE, generator=g)
    t, prev = 600, 400
    a_t, a_p = abar[t], abar[prev]
    beta = 1 - a_t / a_p  # the step's beta over the skipped span
    eps = ((x_t.double() - a_t.sqrt() * x0.double()) / (1 - a_t).sqrt()).float()  # the output that means x0
    sampler = DDPMSampler(process, clip_sample=False)
    out, _ = sampler.step(x_t, eps, torch.tensor([t, prev, -1]), 0, torch.Generator().manual_seed(9))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)).double()
    mean = (a_p.sqrt() * beta / (1 - a_t)) * x0.double() + ((1 - beta).sqrt() * (1 - a_p) / (1 - a_t)) * x_t.double()
    std = ((1 - a_p) / (1 - a_t) * beta).sqrt()
    torch.testing.assert_close(out.double(), mean + std * z, rtol=0, atol=1e-5)


def test_ddpm_adds_no_noise_on_its_last_step_and_is_stateless():
    sampler = DDPMSampler(DDPM())
    levels = sampler.levels(torch.tensor([500, 0]))
    assert levels.tolist() == [500, 0, -1]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = stand_in(x, 0)
    a, _ = sampler.step(x, out, levels, 1, torch.Generator().manual_seed(5))
    b, _ = sampler.step(x, out, levels, 1, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)  # t = 0: deterministic
    c, _ = sampler.step(x, out, levels, 0, torch.Generator().manual_seed(5))
    d, _ = sampler.step(x, out, levels, 0, torch.Generator().manual_seed(5))
    e, _ = sampler.step(x, out, levels, 0, torch.Generator().manual_seed(6))
    assert torch.equal(c, d) and not torch.equal(c, e)  # the noise is the state's generator's, nothing else


def test_ddim_at_eta_zero_ignores_the_generator():
    sampler, levels, _ = DiscreteSamplerSpec("ddim").build(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    a = sample(lambda x, i: stand_in(x, levels[i]), x, levels, sampler, generator=torch.Generator().manual_seed(1))
    b = sample(lambda x, i: stand_in(x, levels[i]), x, levels, sampler, generator=None)
    assert torch.equal(a, b)


def test_noise_for_a_list_of_generators_is_drawn_per_sample():
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = draw_noise(SHAPE, gens, "cpu")
    assert torch.equal(both[1:], torch.randn((1, *SHAPE[1:]), generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: discrete_timesteps(1001, 1000), "from 1 to 1000"),
        (lambda: discrete_timesteps(0, 1000), "from 1 to 1000"),
        (lambda: discrete_timesteps(4, 1000, "cosine"), "timestep_spacing"),
        (lambda: discrete_timesteps(4, 1000, "leading", steps_offset=300), "past the model's 1000"),
        (lambda: DiscreteSamplerSpec("euler"), "unknown sampler 'euler' for a DDPM model"),
        (lambda: DiscreteSamplerSpec("ddim", eta=2.0), "eta must be a number in \\[0, 1\\]"),
        (lambda: DiscreteSamplerSpec("ddpm", variance_type="learned"), "variance_type"),
        (lambda: DiscreteSamplerSpec("ddim").with_overrides(shift=3.0), "shift applies to flow-matching models"),
        (lambda: DDIMSampler().step(torch.zeros(1), torch.zeros(1), torch.tensor([10, 5]), 1), "outside a schedule of 1 steps"),
        (lambda: sampling_from_scheduler_config({"_class_name": "DDIMScheduler", "thresholding": True}), "thresholding"),
        (lambda: sampling_from_scheduler_config({"_class_name": "DDPMScheduler", "prediction_type": "flow"}), "prediction_type"),
    ],
)
def test_bad_settings_are_one_line_errors(make, message):
    with pytest.raises(KinemaError, match=message):
        make()


def test_scheduler_configs_read_into_specs():
    spec = sampling_from_scheduler_config(
        {"_class_name": "DDIMScheduler", "clip_sample": False, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "set_alpha_to_one": False}
    )
    assert (spec.name, spec.noise.prediction_type, spec.timestep_spacing, spec.clip_sample, spec.set_alpha_to_one) == ("ddim", "v_prediction", "trailing", False, False)
    assert spec.with_overrides(name="ddpm").get_sampler().name == "ddpm"
    ddpm = sampling_from_scheduler_config({"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear", "variance_type": "fixed_large"})
    assert (ddpm.name, ddpm.noise.beta_schedule, ddpm.variance_type) == ("ddpm", "scaled_linear", "fixed_large")


# ------------------------------------------------------------------------------------------------
# Against diffusers
# ------------------------------------------------------------------------------------------------
CASES = [
    ("ddpm", "leading", "epsilon", 7, {}),
    ("ddpm", "trailing", "v_prediction", 10, {"variance_type": "fixed_large", "clip_sample": False}),
    ("ddpm", "linspace", "sample", 5, {}),
    ("ddpm", "leading", "epsilon", 1000, {}),
    ("ddim", "leading", "epsilon", 50, {"eta": 0.0}),
    ("ddim", "trailing", "v_prediction", 25, {"eta": 0.0, "clip_sample": False}),
    ("ddim", "linspace", "epsilon", 7, {"eta": 0.5}),
    ("ddim", "leading", "sample", 10, {"eta": 1.0, "set_alpha_to_one": False}),
]


@pytest.mark.parametrize("name, spacing, prediction, steps, extra", CASES)
def test_whole_trajectories_equal_diffusers(diffusers, name, spacing, prediction, steps, extra):
    extra = dict(extra)
    eta = extra.pop("eta", 0.0)
    config = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction, timestep_spacing=spacing, **extra)
    reference = (diffusers.DDPMScheduler if name == "ddpm" else diffusers.DDIMScheduler)(**config)
    reference.set_timesteps(steps)
    spec = sampling_from_scheduler_config({"_class_name": type(reference).__name__, **config})
    if name == "ddim":
        spec = DiscreteSamplerSpec(**{**spec.__dict__, "eta": eta})
    sampler, levels, timesteps = spec.build(steps)
    assert torch.equal(timesteps, reference.timesteps)

    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_ref = diffusers.utils.torch_utils.randn_tensor(SHAPE, generator=g_ref)
    x_ours = draw_noise(SHAPE, g_ours, "cpu")
    for t in reference.timesteps:
        kw = {"eta": eta} if name == "ddim" else {}
        x_ref = reference.step(stand_in(x_ref, t), t, x_ref, generator=g_ref, **kw).prev_sample
    x_ours = sample(lambda x, i: stand_in(x, timesteps[i]), x_ours, levels, sampler, generator=g_ours)
    assert (x_ours - x_ref).abs().max().item() <= 1e-6
