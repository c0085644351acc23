"""Step caching (first-block cache) around the denoisers of Wan, LTX-Video and the pixel DiT: off
is the uncached video bit for bit, on skips blocks and says how many, the model is left as it was,
and bad thresholds are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kinema
from kinema.errors import KinemaError
from kinema.pipelines.step_cache import StepCache
from tests.helpers import save_diffusers_ltx_pipeline, save_diffusers_wan_pipeline

PROMPT = "a red circle moving left"


@pytest.fixture(scope="module", params=["wan", "ltx"])
def case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("step-cache") / request.param
    if request.param == "wan":
        save_diffusers_wan_pipeline(root)
        call = dict(height=32, width=32, num_frames=9, num_inference_steps=8, guidance_scale=3.0)
    else:
        save_diffusers_ltx_pipeline(root)
        call = dict(height=64, width=96, num_frames=17, num_inference_steps=8, guidance_scale=3.0)
    return kinema.load_pipeline(root, device="cpu", dtype="float32"), call


def test_threshold_zero_is_the_uncached_video_and_counts_every_call(case):
    pipe, call = case
    plain = pipe(PROMPT, seed=1, progress_bar=False, **call)
    zero = pipe(PROMPT, seed=1, progress_bar=False, cache_threshold=0.0, **call)
    assert np.array_equal(plain.frames, zero.frames) and torch.equal(plain.latents, zero.latents)
    calls = 8 * (1 if pipe.batch_cfg_default else 2)  # cond and uncond at each of 8 steps: one batch (LTX) or two calls (Wan)
    assert plain.cache is None and zero.cache == {"calls": calls, "skipped": 0}


def test_a_threshold_skips_blocks_and_leaves_the_model_as_it_was(case):
    pipe, call = case
    out = pipe(PROMPT, seed=1, progress_bar=False, cache_threshold=1.0, **call)
    calls = 8 * (1 if pipe.batch_cfg_default else 2)
    assert out.cache["calls"] == calls and 0 < out.cache["skipped"] < calls  # the first step of each branch runs in full
    assert torch.isfinite(out.latents).all()
    assert not any("forward" in vars(block) for block in pipe.transformer.blocks)
    again = pipe(PROMPT, seed=1, progress_bar=False, **call)  # no cache left behind
    assert torch.equal(again.latents, pipe(PROMPT, seed=1, progress_bar=False, **call).latents)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_thresholds_are_one_line(case, bad):
    pipe, call = case
    with pytest.raises(KinemaError, match="cache_threshold must be") as e:
        pipe(PROMPT, seed=1, progress_bar=False, cache_threshold=bad, **call)
    assert "\n" not in str(e.value)


def test_token_models_refuse_it():
    pipe = kinema.load_pipeline("shapes-ar")
    with pytest.raises(KinemaError, match=r"cache_threshold does not apply to a token-ar model"):
        pipe(PROMPT, cache_threshold=0.1, progress_bar=False)


class _Block(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale, self.calls = scale, 0

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.scale * torch.tanh(x + shift)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(s) for s in (0.5, 0.3, 0.2))

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, shift)
        return x


def test_a_skipped_step_reuses_the_last_full_steps_residual_of_the_other_blocks():
    model, cache = _Model(), StepCache(0.5)
    cond, uncond = object(), object()  # two guidance branches: each keeps its own residuals
    run = cache.wrap(lambda x, t, ctx: model(x, torch.tensor(0.0) if ctx is cond else torch.tensor(1.0)))
    x = torch.linspace(-1, 1, 8)
    with cache.attached(model):
        full = run(x, None, cond)
        run(x, None, uncond)
        near = run(x + 0.01, None, cond)  # small change: only the first block runs
        far = run(x + 5.0, None, cond)  # large change: everything runs
    assert [b.calls for b in model.blocks] == [4, 3, 3] and (cache.calls, cache.skipped) == (4, 1)
    first = model.blocks[0]
    h = (x + 0.01) + first.scale * torch.tanh(x + 0.01)
    rest = full - (x + first.scale * torch.tanh(x))  # what blocks 1 and 2 added at the full step
    torch.testing.assert_close(near, h + rest)
    torch.testing.assert_close(far, model(x + 5.0, torch.tensor(0.0)))
    assert not any("forward" in vars(b) for b in model.blocks)


def test_the_model_is_restored_after_an_error():
    model, cache = _Model(), StepCache(0.1)
    with pytest.raises(RuntimeError, match="stop"), cache.attached(model):
        raise RuntimeError("stop")
    assert not any("forward" in vars(b) for b in model.blocks)
