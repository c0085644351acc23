"""What the sampler tests share: a tiny latent, a stand-in denoiser, Wan's scheduler config."""

from __future__ import annotations

import torch

from kinema.sampling import sample

SHAPE = (2, 4, 3, 5, 6)  # (B, C, F, H, W): a tiny video latent

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


def kinema_trajectory(sampler, sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Every sample of a kinema sampling run, one per step."""
    out: list[torch.Tensor] = []
    sample(fake_velocity, start_noise(), sigmas, sampler, callback=lambda i, x: out.append(x))
    return out
