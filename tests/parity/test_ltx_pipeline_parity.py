"""kinema's LTX-Video pipeline against diffusers' LTXPipeline and LTXImageToVideoPipeline.

Tiny random components built with diffusers (transformer, 0.9.1-style VAE with a timestep-conditioned,
noise-injecting decoder, T5) are saved with ``save_pretrained`` and loaded through
``kinema.load_pipeline``; with the same noise (or the same generator) the latents and the decoded
video must match diffusers to 1e-4 in float32. The same weights in the original single-file layout
must give the same videos.

diffusers draws the decoder's injected noise from the global generator and everything else from the
pipeline's; kinema draws all of it from the pipeline's generator. To compare, diffusers' VAE is made
to start its draws where the pipeline's generator stands (as the VAE parity test does).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import kinema
from kinema.pipelines.loading import detect_layout
from kinema.sampling import SamplerSpec
from tests.helpers import save_diffusers_ltx_pipeline, save_original_ltx_layout

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
PROMPT = "a red circle moving left"
NEGATIVE = "blurry low quality"
# 17 frames of 64 x 96: latents (4, 3, 2, 3), 18 tokens; frame_rate and the decode settings are
# given, since kinema's defaults (24 fps, decode timestep 0.05) differ from diffusers' (25 fps, 0).
CALL = dict(height=64, width=96, num_frames=17, num_inference_steps=4, frame_rate=25, decode_timestep=0.05, decode_noise_scale=0.025)
LATENT = (4, 3, 2, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(diffusers LTXPipeline, its directory, kinema's pipeline loaded from it)."""
    root = tmp_path_factory.mktemp("ltx") / "LTX-Video-tiny"
    ref = save_diffusers_ltx_pipeline(root)
    pipe = kinema.load_pipeline(root, device="cpu", dtype="float32")
    return ref, root, pipe


def _noise(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *LATENT, generator=torch.Generator().manual_seed(seed))


def _pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> diffusers' packed (B, F*H*W, C) (patch size 1)."""
    return x.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1, x.shape[1])


def _unpack(x: torch.Tensor) -> torch.Tensor:
    c, f, h, w = LATENT
    return x.reshape(x.shape[0], f, h, w, c).permute(0, 4, 1, 2, 3)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def _run_diffusers(ref, generator: torch.Generator, **kwargs):
    """Call diffusers with its VAE's global-generator draws continuing ``generator``'s stream."""
    decode = ref.vae.decode

    def decode_from_generator(*args, **kw):
        torch.set_rng_state(generator.get_state())
        return decode(*args, **kw)

    ref.vae.decode = decode_from_generator
    try:
        return ref(generator=generator, **kwargs).frames
    finally:
        del ref.vae.decode


def _video01(pipe, latents, generator) -> torch.Tensor:
    """kinema's decode as float frames (B, F, H, W, 3) in [0, 1], like diffusers' output_type="np"."""
    video = pipe.decode_latents(latents, CALL["decode_timestep"], CALL["decode_noise_scale"], generator)
    return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)


def test_loaded_as_ltx_with_the_published_schedule(model):
    _, root, pipe = model
    assert detect_layout(root).pipeline == "ltx-video" and type(pipe).__name__ == "LTXPipeline"
    assert pipe.sampler == SamplerSpec.from_diffusers(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    assert pipe.sampler.shift_terminal == 0.1 and pipe.sampler.resolution_shift.max_shift == 2.05


def test_text_to_video_matches_diffusers(model):
    ref, _, pipe = model
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, **CALL)
    want_latents = _unpack(ref(**kw, latents=_pack(_noise()), output_type="latent").frames)
    want_video = _run_diffusers(ref, torch.Generator().manual_seed(7), **kw, latents=_pack(_noise()), output_type="np")
    out = pipe(**kw, latents=_noise(), generator=torch.Generator().manual_seed(7))
    assert out.latents.shape == (1, *LATENT) and out.fps == 25
    assert _max_diff(out.latents, want_latents) <= TOL
    assert _max_diff(_video01(pipe, out.latents, torch.Generator().manual_seed(7)), want_video) <= TOL
    assert out.frames.dtype == np.uint8 and out.frames.shape == (1, 17, 64, 96, 3)
    assert _max_diff(out.frames, np.round(want_video * 255)) <= 1  # uint8 rounding at a boundary


def test_batch_videos_per_prompt_and_generators_match_diffusers(model):
    ref, _, pipe = model
    kw = dict(prompt=[PROMPT, "a blue square moving up"], guidance_scale=4.0, num_videos_per_prompt=2, output_type="latent", **CALL)
    want = ref(**kw, generator=[torch.Generator().manual_seed(s) for s in range(4)]).frames
    got = pipe(**kw, generator=[torch.Generator().manual_seed(s) for s in range(4)]).latents
    assert got.shape == (4, *LATENT) and _max_diff(got, _unpack(want)) <= TOL


def test_no_guidance_and_guidance_rescale_match_diffusers(model):
    ref, _, pipe = model
    for extra in (dict(guidance_scale=1.0), dict(guidance_scale=5.0, guidance_rescale=0.7)):
        kw = dict(prompt=PROMPT, output_type="latent", **CALL, **extra)
        want = _unpack(ref(**kw, latents=_pack(_noise(seed=3))).frames)
        assert _max_diff(pipe(**kw, latents=_noise(seed=3)).latents, want) <= TOL


@pytest.fixture(scope="module")
def i2v(model):
    ref, _, _ = model
    return diffusers.LTXImageToVideoPipeline(**ref.components)


def _image(seed: int = 5) -> torch.Tensor:
    return torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(seed))  # (3, H, W) in [0, 1]


def test_image_to_video_matches_diffusers(model, i2v):
    _, _, pipe = model
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=_image(), guidance_scale=3.0, **CALL)
    # same generator: the image's posterior sample, then the noise, then the decode noise
    want_latents = _unpack(i2v(**kw, generator=torch.Generator().manual_seed(11), output_type="latent").frames)
    want_video = _run_diffusers(i2v, torch.Generator().manual_seed(11), **kw, output_type="np")
    g = torch.Generator().manual_seed(11)
    out = pipe(**kw, generator=g)
    assert _max_diff(out.latents, want_latents) <= TOL
    z_image = want_latents[:, :, :1]
    assert _max_diff(out.latents[:, :, :1], z_image) <= 1e-5  # frame 0 is the image's latent, never stepped
    # kinema's generator stands where diffusers' did before the decode: decode with a copy of it
    g_decode = torch.Generator().manual_seed(11)
    pipe(**kw, generator=g_decode, output_type="latent")
    assert _max_diff(_video01(pipe, out.latents, g_decode), want_video) <= TOL
    assert _max_diff(out.frames, np.round(want_video * 255)) <= 1


def test_image_to_video_with_given_latents_matches_diffusers(model, i2v):
    """diffusers takes latents= whole (frame 0 already the image's); kinema takes the noise and puts
    the image's latents into frame 0: from the same noise and generator the runs agree."""
    _, _, pipe = model
    image = _image(6)
    kw = dict(prompt=[PROMPT, "a blue square moving up"], guidance_scale=2.5, output_type="latent", **CALL)
    noise = _noise(batch=2, seed=8)
    processed = i2v.video_processor.preprocess(image, height=64, width=96)
    packed, _ = i2v.prepare_latents(processed, 2, 4, 64, 96, 17, torch.float32, "cpu", torch.Generator().manual_seed(2))
    whole = torch.cat([_unpack(packed)[:, :, :1], noise[:, :, 1:]], dim=2)  # the image's frame 0, our noise after it
    want = _unpack(i2v(**kw, image=image, latents=_pack(whole)).frames)
    got = pipe(**kw, image=image, latents=noise, generator=torch.Generator().manual_seed(2)).latents
    assert _max_diff(got, want) <= TOL


def test_image_to_video_directory_loads_as_the_same_pipeline(model, tmp_path):
    _, root, pipe = model
    copy = tmp_path / "i2v"
    shutil.copytree(root, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps(index | {"_class_name": "LTXImageToVideoPipeline"}))
    layout = detect_layout(copy)
    assert (layout.format, layout.pipeline) == ("diffusers", "ltx-video")
    other = kinema.load_pipeline(copy, device="cpu", dtype="float32")
    kw = dict(prompt=PROMPT, guidance_scale=1.0, output_type="latent", **CALL)
    assert torch.equal(other(**kw, latents=_noise()).latents, pipe(**kw, latents=_noise()).latents)


@pytest.mark.parametrize("text_under_repo", [False, True])
def test_original_single_file_layout_matches_diffusers(model, tmp_path, text_under_repo):
    ref, root, _ = model
    original_root = save_original_ltx_layout(root, tmp_path / "LTX-Video", name="any-name.safetensors", text_under_repo=text_under_repo)
    layout = detect_layout(original_root)
    assert (layout.format, layout.pipeline) == ("ltx-original", "ltx-video")
    assert layout.components["transformer"].name == "any-name.safetensors"
    original = kinema.load_pipeline(original_root, device="cpu", dtype="float32")
    # the original RectifiedFlowScheduler config in the metadata means the published schedule
    assert original.sampler == SamplerSpec.from_diffusers(dict(ref.scheduler.config))
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=3.0, **CALL)
    want_latents = _unpack(ref(**kw, latents=_pack(_noise()), output_type="latent").frames)
    want_video = _run_diffusers(ref, torch.Generator().manual_seed(7), **kw, latents=_pack(_noise()), output_type="np")
    out = original(**kw, latents=_noise(), generator=torch.Generator().manual_seed(7))
    assert _max_diff(out.latents, want_latents) <= TOL
    assert _max_diff(_video01(original, out.latents, torch.Generator().manual_seed(7)), want_video) <= TOL


@pytest.mark.parametrize(
    "scheduler",
    [
        {},  # diffusers' own FlowMatchEulerDiscreteScheduler() defaults: static shift 1 (its LTX tests' config)
        {"shift": 3.0},
        {"shift": 2.0, "shift_terminal": 0.1},
    ],
    ids=["default", "shift-3", "shift-2-terminal"],
)
def test_static_shift_scheduler_matches_ltx_pipeline(scheduler, tmp_path):
    """A scheduler without dynamic shifting: LTXPipeline passes linspace(1, 1/N, N) and the
    scheduler shifts it by its static shift (then stretches it to a terminal); the same sigmas and
    the same latents here, bit for bit in the schedule."""
    ref = save_diffusers_ltx_pipeline(tmp_path / "ltx", scheduler=scheduler)
    pipe = kinema.load_pipeline(tmp_path / "ltx", device="cpu", dtype="float32")
    kw = dict(prompt=PROMPT, guidance_scale=1.0, **CALL)
    ref.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=None)
    ours = pipe.sampler.schedule(4, seq_len=18)
    assert torch.equal(ours.sigmas, ref.scheduler.sigmas.float()) and torch.equal(ours.timesteps, ref.scheduler.timesteps.float())
    want = _unpack(ref(**kw, latents=_pack(_noise()), output_type="latent").frames)
    got = pipe(**kw, latents=_noise(), output_type="latent", progress_bar=False).latents
    assert _max_diff(got, want) <= TOL
