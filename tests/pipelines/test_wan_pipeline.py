"""The Wan text-to-video pipeline against diffusers' WanPipeline, through kinema's real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kinema
from kinema.errors import KinemaError
from tests.contracts import PipelineContract
from tests.helpers import save_diffusers_wan_pipeline

PROMPT = "a red circle moving left"
NEGATIVE = "blurry low quality"
CALL = dict(height=32, width=32, num_frames=9, num_inference_steps=4)
LATENT_SHAPE = (1, 16, 3, 4, 4)


@pytest.fixture(scope="module")
def unipc_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan") / "unipc"
    ref = save_diffusers_wan_pipeline(root, scheduler="unipc", shift=3.0)
    ref.set_progress_bar_config(disable=True)
    return root, ref


@pytest.fixture(scope="module")
def pipe(unipc_model):
    p = kinema.load_pipeline(unipc_model[0], device="cpu", dtype="float32")
    return p


def _noise(shape=LATENT_SHAPE, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def test_whole_pipeline_matches_diffusers_unipc_with_guidance(unipc_model, pipe):
    _, ref = unipc_model
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, **CALL)
    ref_latents = ref(**kw, latents=_noise(), output_type="latent").frames
    ref_video = ref(**kw, latents=_noise(), output_type="np").frames  # float in [0, 1], (B, F, H, W, 3)
    out = pipe(**kw, latents=_noise())
    assert out.latents.shape == LATENT_SHAPE
    assert _max_diff(out.latents, ref_latents) <= 1e-4
    assert out.frames.dtype == np.uint8 and out.frames.shape == (1, 9, 32, 32, 3)
    assert _max_diff(out.frames, np.round(ref_video * 255)) <= 1  # uint8 rounding at a boundary
    decoded = (pipe.decode_latents(out.latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
    assert _max_diff(decoded, ref_video) <= 1e-4


def test_euler_and_batch_of_prompts_match_diffusers(tmp_path):
    ref = save_diffusers_wan_pipeline(tmp_path / "euler", scheduler="euler", shift=7.0)
    ref.set_progress_bar_config(disable=True)
    pipe = kinema.load_pipeline(tmp_path / "euler", device="cpu", dtype="float32")
    prompts = [PROMPT, "a blue square moving up"]
    kw = dict(prompt=prompts, negative_prompt=NEGATIVE, guidance_scale=5.0, **CALL)
    noise = _noise((2, *LATENT_SHAPE[1:]))
    ref_latents = ref(**kw, latents=noise.clone(), output_type="latent").frames
    out = pipe(**kw, latents=noise.clone(), output_type="latent")
    assert out.frames is None and _max_diff(out.latents, ref_latents) <= 1e-4


def test_same_generator_same_noise_as_diffusers(unipc_model, pipe):
    _, ref = unipc_model
    kw = dict(prompt=PROMPT, guidance_scale=3.0, output_type="latent", **CALL)
    a = ref(**kw, generator=torch.Generator().manual_seed(7)).frames
    b = pipe(**kw, generator=torch.Generator().manual_seed(7)).latents
    c = pipe(**kw, seed=7).latents
    assert _max_diff(a, b) <= 1e-4 and torch.equal(b, c)


def test_guidance_one_runs_no_unconditional_pass(pipe):
    contexts = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: contexts.append(args[2]))
    try:
        pipe(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="latent", **CALL)
        assert len(contexts) == CALL["num_inference_steps"]
        contexts.clear()
        pipe(prompt=PROMPT, guidance_scale=2.0, seed=0, output_type="latent", **CALL)
        assert len(contexts) == 2 * CALL["num_inference_steps"]
    finally:
        hook.remove()


def test_callback_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, float(t), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == CALL["num_inference_steps"] - 1 else None

    out = pipe(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="latent", callback_on_step_end=callback, **CALL)
    assert [s[0] for s in seen] == list(range(CALL["num_inference_steps"]))
    assert seen[0][1] > seen[-1][1] and all(s[2] == LATENT_SHAPE for s in seen)
    assert out.latents.abs().max() == 0


def test_videos_per_prompt_and_negative_prompt_change_output(pipe):
    out = pipe(prompt=PROMPT, num_videos_per_prompt=2, guidance_scale=1.0, seed=0, output_type="latent", **CALL)
    assert out.latents.shape == (2, *LATENT_SHAPE[1:]) and not torch.equal(out.latents[0], out.latents[1])
    a = pipe(prompt=PROMPT, negative_prompt="", guidance_scale=4.0, seed=0, output_type="latent", **CALL)
    b = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, seed=0, output_type="latent", **CALL)
    assert not torch.equal(a.latents, b.latents)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=10), "4k\\+1.*got 10, try 9 or 13"),
        (dict(height=40), "multiple of 16"),
        (dict(width=0), "width must be a positive integer"),
        (dict(num_inference_steps=0), "positive integer"),
        (dict(output_type="pil"), "output_type"),
        (dict(latents=torch.zeros(1, 16, 2, 4, 4)), "latents .* must have shape"),
        (dict(seed=1, generator=torch.Generator()), "either generator= or seed="),
        (dict(prompt=None), "exactly one of prompt= and prompt_embeds="),
        (dict(negative_prompt=["a", "b"]), "negative prompts for 1 prompts"),
    ],
)
def test_bad_arguments_raise_one_line_errors(pipe, kwargs, message):
    call = dict(prompt=PROMPT, guidance_scale=2.0, **CALL)
    call.update(kwargs)
    with pytest.raises(KinemaError, match=message) as e:
        pipe(**call)
    assert "\n" not in str(e.value)


def test_original_wan_layout_gives_the_same_video(unipc_model, tmp_path):
    """The same weights in the original Wan 2.1 release layout (original keys, .pth VAE and T5)."""
    from tests.helpers import save_original_wan_layout

    root = save_original_wan_layout(unipc_model[0], tmp_path / "Wan2.1-T2V-tiny")
    original = kinema.load_pipeline(root, device="cpu", dtype="float32")
    ref = kinema.load_pipeline(unipc_model[0], device="cpu", dtype="float32")
    # the original layout has no scheduler file: Wan's defaults (UniPC, shift 5) apply, and Wan's
    # scripts' negative prompt when a call gives none (diffusers' layout: none)
    assert (original.sampler.name, original.sampler.shift) == ("unipc", 5.0)
    from kinema.checkpoints.wan import ORIGINAL_NEGATIVE_PROMPT

    assert original.defaults.negative_prompt == ORIGINAL_NEGATIVE_PROMPT and ref.defaults.negative_prompt is None
    plain = dict(prompt=PROMPT, guidance_scale=4.0, shift=5.0, **CALL)
    by_default = original(**plain, latents=_noise()).latents
    assert torch.equal(by_default, original(**plain, negative_prompt=ORIGINAL_NEGATIVE_PROMPT, latents=_noise()).latents)
    assert not torch.equal(by_default, original(**plain, negative_prompt="", latents=_noise()).latents)
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=4.0, shift=5.0, latents=_noise(), **CALL)
    a, b = original(**kw), ref(**kw)
    assert torch.equal(a.latents, b.latents) and np.array_equal(a.frames, b.frames)


class TestWanPipelineContract(PipelineContract):
    """tests/contracts.py: the same video for the same seed, progress and cancellation."""

    call = dict(prompt=PROMPT, guidance_scale=3.0, **CALL)
    stages = (("text", 1), ("denoise", CALL["num_inference_steps"]), ("decode", 1))
