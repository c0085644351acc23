"""LTX-Video's schedule: a resolution-dependent shift (and a terminal stretch), value for value and
step for step equal to diffusers' FlowMatchEulerDiscreteScheduler as LTXPipeline drives it (those
tests skip without diffusers), and its properties and settings (which need no diffusers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kinema.errors import KinemaError
from kinema.sampling import (
    SAMPLERS,
    ResolutionShift,
    SamplerSpec,
    resolution_shift_mu,
    resolution_shift_schedule,
    sample,
    shift_sigmas,
    strength_start_index,
)

# Lightricks/LTX-Video scheduler/scheduler_config.json as published (diffusers 0.32)
LTX_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.32.0.dev0", "base_image_seq_len": 1024,
    "base_shift": 0.95, "invert_sigmas": False, "max_image_seq_len": 4096, "max_shift": 2.05, "num_train_timesteps": 1000,
    "shift": 1.0, "shift_terminal": 0.1, "use_beta_sigmas": False, "use_dynamic_shifting": True,
    "use_exponential_sigmas": False, "use_karras_sigmas": False,
}  # fmt: skip
LTX_SHIFT = (1024, 4096, 0.95, 2.05)
# latent tokens: tiny, LTX's base and max, 704x480x161 (diffusers' default: 21*15*22), 768x512x121
SEQ_LENS = [1, 18, 1024, 4096, 6930, 6144, 20000]


def _reference(diffusers, steps: int, seq_len: int, **config):
    """diffusers' scheduler after LTXPipeline's set_timesteps(sigmas=linspace(1, 1/N, N), mu=...)."""
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    ref = diffusers.FlowMatchEulerDiscreteScheduler.from_config({**LTX_CONFIG, **config})
    c = ref.config
    mu = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return ref, mu


@pytest.mark.parametrize("steps", [2, 3, 10, 40, 50])
@pytest.mark.parametrize("seq_len", SEQ_LENS)
@pytest.mark.parametrize("terminal", [0.1, None])
def test_schedule_equals_diffusers_bit_for_bit(diffusers, steps, seq_len, terminal):
    ref, mu = _reference(diffusers, steps, seq_len, shift_terminal=terminal)
    assert resolution_shift_mu(seq_len, *LTX_SHIFT) == mu
    ours = resolution_shift_schedule(steps, mu, terminal)
    assert ours.sigmas.dtype == ref.sigmas.dtype == torch.float32 and ours.timesteps.dtype == torch.float32
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.timesteps, ref.timesteps)
    spec = SamplerSpec.from_diffusers(LTX_CONFIG | {"shift_terminal": terminal})
    _, sigmas, timesteps = spec.build(steps, seq_len=seq_len)
    assert torch.equal(sigmas, ref.sigmas) and torch.equal(timesteps, ref.timesteps)


@pytest.mark.parametrize("steps", [1, 4, 30])
def test_linear_time_shift_and_one_step_equal_diffusers(diffusers, steps):
    ref, mu = _reference(diffusers, steps, 3000, shift_terminal=None, time_shift_type="linear")
    assert torch.equal(resolution_shift_schedule(steps, mu, None, time_shift_type="linear").sigmas, ref.sigmas)


def _velocity(x: torch.Tensor, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    return 0.3 * torch.tanh(x) + torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("steps", [2, 7, 50])
@pytest.mark.parametrize("seq_len", [18, 6144])
def test_euler_trajectory_equals_diffusers_bit_for_bit(diffusers, steps, seq_len):
    ref, _ = _reference(diffusers, steps, seq_len)
    ref.set_begin_index(0)
    x0 = torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    want, x = [], x0
    for i, t in enumerate(ref.timesteps):
        x = ref.step(_velocity(x, i), t, x).prev_sample
        want.append(x)
    sampler, sigmas, timesteps = SamplerSpec.from_diffusers(LTX_CONFIG).build(steps, seq_len=seq_len)
    got: list[torch.Tensor] = []
    sample(_velocity, x0, sigmas, sampler, callback=lambda i, x: got.append(x))
    assert len(got) == steps and all(torch.equal(a, b) for a, b in zip(got, want))


def test_spec_from_the_ltx_config():
    spec = SamplerSpec.from_diffusers(LTX_CONFIG)
    assert spec == SamplerSpec("euler", 1.0, 1000, resolution_shift=ResolutionShift(*LTX_SHIFT), shift_terminal=0.1)
    assert spec.get_sampler() is SAMPLERS["euler"]
    # diffusers reads a falsy shift_terminal as off; its defaults fill missing keys
    assert SamplerSpec.from_diffusers(LTX_CONFIG | {"shift_terminal": 0}).shift_terminal is None
    bare = SamplerSpec.from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True})
    assert bare.resolution_shift == ResolutionShift() == ResolutionShift(256, 4096, 0.5, 1.15)
    with pytest.raises(KinemaError, match="seq_len"):
        spec.build(10)
    # static configs are unchanged
    assert SamplerSpec.from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}) == SamplerSpec("euler", 3.0)


def test_the_shift_grows_with_the_resolution():
    spec = SamplerSpec.from_diffusers(LTX_CONFIG)
    mid = [float(spec.schedule(20, seq_len=n).sigmas[10]) for n in (256, 1024, 4096, 16384)]
    assert mid == sorted(mid) and mid[0] < mid[-1]
    # exp(mu) is the static shift: without the terminal, the same sigmas as shift_sigmas (to rounding)
    s = resolution_shift_schedule(20, math.log(3.0), None).sigmas[:-1]
    torch.testing.assert_close(s, shift_sigmas(torch.linspace(1, 1 / 20, 20), 3.0))
    stretched = spec.schedule(20, seq_len=6144).sigmas
    assert float(stretched[0]) == 1.0 and float(stretched[-2]) == pytest.approx(0.1) and float(stretched[-1]) == 0.0


def test_overrides_fix_the_shift():
    spec = SamplerSpec.from_diffusers(LTX_CONFIG)
    fixed = spec.with_overrides(shift=4.0)
    assert fixed.shift == 4.0 and fixed.shift_terminal == 0.1
    a, b = fixed.schedule(10, seq_len=18).sigmas, fixed.schedule(10, seq_len=50000).sigmas
    assert torch.equal(a, b) and torch.equal(a, resolution_shift_schedule(10, math.log(4.0), 0.1).sigmas)
    assert spec.with_overrides(name="euler") is spec or spec.with_overrides(name="euler") == spec
    with pytest.raises(KinemaError, match="euler sampler only"):
        spec.with_overrides(name="unipc")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: resolution_shift_schedule(1, 0.5, 0.1), "num_inference_steps >= 2"),
        (lambda: resolution_shift_schedule(10, 0.5, 1.5), "shift_terminal must lie in"),
        (lambda: resolution_shift_schedule(0, 0.5), "positive integer"),
        (lambda: resolution_shift_schedule(10, float("nan")), "finite"),
        (lambda: SamplerSpec("unipc", shift_terminal=0.1), "only with the euler sampler"),
        (lambda: SamplerSpec("unipc", resolution_shift=ResolutionShift()), "euler sampler only"),
        (lambda: ResolutionShift(time_shift_type="cubic"), "time_shift_type"),
        (lambda: ResolutionShift(base_seq_len=10, max_seq_len=10), "base_seq_len != max_seq_len"),
    ],
)
def test_bad_settings_raise(make, message):
    with pytest.raises(KinemaError, match=message):
        make()


def test_strength_start_index():
    sigmas = resolution_shift_schedule(10, 1.5, 0.1).sigmas  # 1.0 ... 0.1, 0
    assert strength_start_index(sigmas, 1.0) == 0
    i = strength_start_index(sigmas, 0.5)
    assert float(sigmas[i]) <= 0.5 < float(sigmas[i - 1])
    assert strength_start_index(sigmas, 0.11) == 9  # the last step (from the terminal, 0.1)
    assert strength_start_index(sigmas, 0.05) == 10  # below every step: no step runs
    for bad in (0.0, -0.1, 1.01, True, "0.5"):
        with pytest.raises(KinemaError, match="strength must be in"):
            strength_start_index(sigmas, bad)


@pytest.mark.parametrize("shift, terminal, steps", [(3.0, 0.1, 10), (1.0, 0.02, 4), (7.0, 0.3, 25)])
def test_static_shift_with_a_terminal_matches_diffusers(diffusers, shift, terminal, steps):
    """FlowMatchEulerDiscreteScheduler(shift, shift_terminal) with its own timesteps (as a Wan-style
    pipeline drives it): the same sigmas and timesteps, bit for bit."""
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": shift, "shift_terminal": terminal}
    spec = SamplerSpec.from_diffusers(config)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, shift_terminal=terminal)
    ref.set_timesteps(steps)
    ours = spec.schedule(steps)
    assert torch.equal(ours.sigmas, ref.sigmas.float()) and torch.equal(ours.timesteps, ref.timesteps.float())
    assert float(ours.sigmas[-2]) == pytest.approx(terminal)
