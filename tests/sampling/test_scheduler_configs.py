"""Sampler specs from diffusers ``scheduler_config.json`` files: what kinema reads, which defaults
fill missing keys, which settings it refuses (results would silently differ otherwise), and
overrides. Nothing here needs diffusers; the trajectories of these configs against diffusers' own
schedulers are in test_samplers.py."""

from __future__ import annotations

import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling import (
    EulerSampler,
    SamplerSpec,
    UniPCSampler,
    flow_match_euler_schedule,
    sampling_from_scheduler_config,
    unipc_flow_schedule,
)
from tests.sampling.common import WAN_SCHEDULER_CONFIG


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
