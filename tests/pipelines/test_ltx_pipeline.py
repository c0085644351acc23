"""The LTX-Video pipeline on its own: seeds, batches, image- and video-to-video behaviour, errors,
the original layout's detection, and the command line's --image / --input."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import kinema
from kinema.cli import main
from kinema.errors import CheckpointError, KinemaError
from kinema.models.vae.ltx_vae import LTXVAE, LTXVAEConfig
from kinema.pipelines.base import initial_noise
from kinema.pipelines.inputs import images_to_tensor, resize_and_crop, videos_to_tensor
from kinema.pipelines.loading import detect_layout
from kinema.pipelines.ltx import LTXDefaults, LTXPipeline
from kinema.video import read_video, write_video
from tests.contracts import PipelineContract
from tests.helpers import save_diffusers_ltx_pipeline, save_original_ltx_layout

pytest.importorskip("diffusers")

PROMPT = "a red circle moving left"
CALL = dict(height=64, width=96, num_frames=17, num_inference_steps=3)
LATENT = (4, 3, 2, 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ltx") / "LTX-Video-tiny"
    save_diffusers_ltx_pipeline(root)
    return root


@pytest.fixture(scope="module")
def pipe(model_dir):
    p = kinema.load_pipeline(model_dir, device="cpu", dtype="float32")
    return p


def _video(frames: int = 20, seed: int = 0) -> np.ndarray:
    """A smooth moving pattern (F, 64, 96, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 8, 12, generator=g)
    out = []
    for i in range(frames):
        frame = torch.nn.functional.interpolate(base.roll(i % 12, dims=2)[None], size=(64, 96), mode="bilinear")[0]
        out.append((frame.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return np.stack(out)


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


# ------------------------------------------------------------------------------------------------
# Seeds, batches, defaults
# ------------------------------------------------------------------------------------------------
def test_output_and_a_generator_like_its_seed(pipe):
    kw = dict(prompt=PROMPT, guidance_scale=3.0, **CALL)
    a = pipe(**kw, seed=3)
    assert a.frames.shape == (1, 17, 64, 96, 3) and a.frames.dtype == np.uint8 and a.fps == 24
    same = pipe(**kw, generator=torch.Generator().manual_seed(3))
    assert torch.equal(same.latents, a.latents) and np.array_equal(same.frames, a.frames)


def test_batch_of_prompts_and_videos_per_prompt(pipe):
    kw = dict(prompt=[PROMPT, "a blue square moving up"], guidance_scale=1.0, seed=0, output_type="latent", **CALL)
    out = pipe(**kw, num_videos_per_prompt=2)
    assert out.latents.shape == (4, *LATENT) and out.frames is None
    assert len({tuple(x.flatten()[:4].tolist()) for x in out.latents}) == 4  # four different videos
    pt = pipe(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="pt", **CALL)
    assert isinstance(pt.frames, torch.Tensor) and pt.frames.dtype == torch.uint8


def test_negative_prompt_and_embeds_with_masks(pipe):
    kw = dict(guidance_scale=4.0, seed=0, output_type="latent", **CALL)
    a = pipe(prompt=PROMPT, negative_prompt="", **kw).latents
    b = pipe(prompt=PROMPT, negative_prompt="blurry low quality", **kw).latents
    assert not torch.equal(a, b)
    cond, uncond = pipe.encode_text([PROMPT]), pipe.encode_text([""])
    assert cond.states.shape == (1, 128, 32) and cond.mask.dtype == torch.bool and int(cond.mask.sum()) == 6
    c = pipe(
        prompt_embeds=cond.states, prompt_attention_mask=cond.mask,
        negative_prompt_embeds=uncond.states, negative_prompt_attention_mask=uncond.mask, **kw,
    ).latents  # fmt: skip
    assert torch.equal(a, c)
    # T5 runs over the padding too (diffusers' convention), so the text length changes the states
    assert pipe.encode_text([PROMPT], max_sequence_length=16).states.shape == (1, 16, 32)
    assert pipe(prompt=PROMPT, max_sequence_length=16, **kw).latents.shape == a.shape


def test_guidance_one_runs_one_pass_per_step(pipe):
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        pipe(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="latent", **CALL)
        assert calls == [1, 1, 1]
        calls.clear()
        pipe(prompt=PROMPT, guidance_scale=2.0, seed=0, output_type="latent", **CALL)
        assert calls == [2, 2, 2]  # cond and uncond in one batch per step
    finally:
        hook.remove()


def test_batched_and_sequential_guidance_agree(pipe, monkeypatch):
    """cond and uncond as one batch of 2B (the default) or as two forwards: the same video."""
    kw = dict(CALL, negative_prompt=["blurry", "dark"], guidance_scale=3.0, seed=1, output_type="latent")
    calls = []
    forward = type(pipe.transformer).forward
    monkeypatch.setattr(type(pipe.transformer), "forward", lambda self, x, *a, **k: calls.append(x.shape[0]) or forward(self, x, *a, **k))
    batched = pipe([PROMPT, "a blue square moving up"], **kw).latents
    assert set(calls) == {4}  # 2 prompts x (cond, uncond) per step
    calls.clear()
    sequential = pipe([PROMPT, "a blue square moving up"], **kw, batch_cfg=False).latents  # a per-call option
    assert set(calls) == {2}
    assert _max_diff(batched, sequential) < 1e-5


def test_callback_sees_every_step_and_can_replace_latents(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, float(t)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else None

    out = pipe(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="latent", callback_on_step_end=callback, **CALL)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == 1000.0 and seen[0][1] > seen[-1][1]
    assert out.latents.abs().max() == 0


def pipe_rules_of(defaults: LTXDefaults):
    """LTX-Video's rules at the published VAE's strides (8 x 32 x 32) with these defaults."""
    from kinema.models.ltx import LTX_PRESETS
    from kinema.models.vae.ltx_vae import LTXVAEConfig

    return LTXPipeline.model_rules(LTX_PRESETS["spectro-2b"](), LTXVAEConfig(), defaults=defaults)


def test_defaults_are_spectro_2b():
    d = LTXDefaults()
    assert (d.width, d.height, d.num_frames, d.fps) == (768, 512, 121, 24.0)
    assert (d.num_inference_steps, d.guidance_scale, d.max_sequence_length) == (50, 3.0, 128)
    from kinema.request import GenerationRequest

    request = GenerationRequest(prompt=PROMPT).checked(pipe_rules_of(LTXDefaults()))
    assert (request.height, request.width, request.num_frames, request.num_inference_steps) == (512, 768, 121, 50)


def test_frame_rate_changes_the_positions_and_the_output_fps(pipe):
    kw = dict(prompt=PROMPT, guidance_scale=1.0, seed=0, output_type="latent", **CALL)
    a, b = pipe(**kw), pipe(**kw, frame_rate=12)
    assert b.fps == 12.0 and not torch.equal(a.latents, b.latents)


# ------------------------------------------------------------------------------------------------
# Image-to-video
# ------------------------------------------------------------------------------------------------
def test_image_to_video_keeps_frame_zero_and_conditions_it_at_time_zero(pipe):
    image = _video(1)[0]  # (64, 96, 3) uint8
    timesteps = []
    hook = pipe.transformer.register_forward_hook(lambda m, args, out: timesteps.append(args[1].clone()))
    firsts = []
    try:
        out = pipe(
            prompt=PROMPT, image=image, guidance_scale=1.0, seed=1, **CALL,
            callback_on_step_end=lambda p, i, t, kw: firsts.append(kw["latents"][:, :, :1].clone()),
        )  # fmt: skip
    finally:
        hook.remove()
    assert all(torch.equal(f, out.latents[:, :, :1]) for f in firsts)  # frame 0 never moves
    for t in timesteps:  # per token: 0 on frame 0's 2 x 3 tokens, the step's timestep elsewhere
        assert t.shape == (1, 18) and torch.all(t[:, :6] == 0) and torch.all(t[:, 6:] == t[0, 6])
    # the kept frame is the image's latent: a posterior sample drawn first from the generator
    g = torch.Generator().manual_seed(1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None, :, None].float() / 255 * 2 - 1
    posterior = pipe.vae.encode(x)
    want = pipe.vae.normalize_latents(posterior.mean + posterior.std * initial_noise(tuple(posterior.mean.shape), g, pipe.device))
    assert _max_diff(out.latents[:, :, :1], want) <= 1e-6
    again = pipe(prompt=PROMPT, image=image, guidance_scale=1.0, seed=1, **CALL)
    assert np.array_equal(again.frames, out.frames)


def test_image_is_resized_and_cropped_and_one_per_prompt(pipe):
    big = np.repeat(np.repeat(_video(1)[0], 2, axis=0), 2, axis=1)  # (128, 192, 3): the same picture, twice the size
    kw = dict(guidance_scale=1.0, seed=0, output_type="latent", **CALL)
    a = pipe(prompt=PROMPT, image=_video(1)[0], **kw).latents
    b = pipe(prompt=PROMPT, image=big, **kw).latents
    assert _max_diff(a[:, :, :1], b[:, :, :1]) < 0.5  # nearly the same picture after resizing
    two = pipe(prompt=[PROMPT, PROMPT], image=[_video(1, seed=1)[0], _video(1, seed=2)[0]], **kw).latents
    assert two.shape == (2, *LATENT) and not torch.equal(two[0, :, 0], two[1, :, 0])
    with pytest.raises(KinemaError, match="got 3 images for 2 prompts"):
        pipe(prompt=[PROMPT, PROMPT], image=[big, big, big], **kw)


def test_image_and_video_input_conversions():
    u8 = _video(1)[0]
    t = images_to_tensor(u8)
    assert t.shape == (1, 3, 64, 96) and float(t.max()) <= 1
    assert torch.equal(images_to_tensor(torch.from_numpy(u8)), t)  # uint8 tensors are channels-last
    assert torch.equal(images_to_tensor(t[0]), t)  # float tensors are channels-first, in [0, 1]
    assert images_to_tensor([u8, u8]).shape == (2, 3, 64, 96)
    v = videos_to_tensor(_video(5))
    assert v.shape == (1, 3, 5, 64, 96) and torch.equal(videos_to_tensor(list(_video(5))), v)
    assert torch.equal(resize_and_crop(v, 64, 96), v)
    assert resize_and_crop(v, 32, 32).shape == (1, 3, 5, 32, 32)
    for bad, message in [(u8.astype(np.int32), "uint8 or float"), (t * 2 - 1, r"in \[0, 1\]"), (u8[..., :2], "3 \\(RGB\\) channels"), ("x.png", "expected an image")]:
        with pytest.raises(KinemaError, match=message):
            images_to_tensor(bad)


# ------------------------------------------------------------------------------------------------
# Video-to-video
# ------------------------------------------------------------------------------------------------
def _encoded_input(pipe, video: np.ndarray, seed: int, frames: int = 17) -> torch.Tensor:
    """What video-to-video starts from: the noise is drawn first, then the input's posterior sample."""
    g = torch.Generator().manual_seed(seed)
    initial_noise((1, *LATENT), g, pipe.device)
    x = torch.from_numpy(video[:frames]).permute(3, 0, 1, 2)[None].float() / 255 * 2 - 1
    posterior = pipe.vae.encode(x)
    return pipe.vae.normalize_latents(posterior.mean + posterior.std * initial_noise(tuple(posterior.mean.shape), g, pipe.device))


def test_strength_one_ignores_the_input(pipe):
    kw = dict(prompt=PROMPT, guidance_scale=2.0, seed=5, **CALL)
    text_only = pipe(**kw)
    a = pipe(**kw, video=_video(20, seed=1), strength=1.0)
    b = pipe(**kw, video=_video(20, seed=2), strength=1.0)
    assert torch.equal(a.latents, text_only.latents) and np.array_equal(a.frames, text_only.frames)
    assert torch.equal(a.latents, b.latents)


def test_strength_near_zero_returns_the_input(pipe):
    video = _video(20)
    clean = _encoded_input(pipe, video, seed=5)
    kw = dict(prompt=PROMPT, guidance_scale=2.0, seed=5, video=video, **CALL)
    steps = []
    out = pipe(**kw, strength=0.05, callback_on_step_end=lambda p, i, t, k: steps.append(i))  # below the last sigma, 0.1
    assert steps == [] and torch.equal(out.latents, clean)  # no step runs: the input's own latents
    again = pipe(**kw, strength=0.05)
    assert np.array_equal(again.frames, out.frames)
    # the more strength, the further from the input
    kw["num_inference_steps"] = 10
    far = [_max_diff(pipe(**kw, strength=s, output_type="latent").latents, clean) for s in (0.2, 0.6, 1.0)]
    assert far[0] < far[1] < far[2]


def test_strength_runs_the_steps_below_it(pipe):
    sigmas = pipe.sampler.build(10, seq_len=18)[1]
    seen = []
    pipe(
        prompt=PROMPT, video=_video(20), strength=0.5, guidance_scale=1.0, seed=0, output_type="latent",
        callback_on_step_end=lambda p, i, t, k: seen.append(float(t)), **{**CALL, "num_inference_steps": 10},
    )  # fmt: skip
    expected = [1000 * float(s) for s in sigmas[:-1] if float(s) <= 0.5]
    assert seen == pytest.approx(expected) and 0 < len(seen) < 10


def test_video_frames_default_to_what_the_input_has(pipe):
    out = pipe(prompt=PROMPT, video=_video(20), guidance_scale=1.0, seed=0, **{**CALL, "num_frames": None})
    assert out.frames.shape[1] == 17  # 20 frames: the most 8k+1 that fit
    with pytest.raises(KinemaError, match="has 20 frames, fewer than num_frames=25; use num_frames=17"):
        pipe(prompt=PROMPT, video=_video(20), **{**CALL, "num_frames": 25})


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=30), "num_frames must be 8k\\+1 for this VAE.*got 30, try 25 or 33"),
        (dict(height=48), "height must be a positive multiple of 32"),
        (dict(width=100), "width must be a positive multiple of 32.*try 96 or 128"),
        (dict(num_inference_steps=0), "positive integer"),
        (dict(num_inference_steps=1), "num_inference_steps >= 2"),
        (dict(output_type="pil"), "output_type"),
        (dict(latents=torch.zeros(1, 4, 2, 2, 3)), "latents .* must have shape"),
        (dict(seed=1, generator=torch.Generator()), "either generator= or seed="),
        (dict(prompt=None), "exactly one of prompt= and prompt_embeds="),
        (dict(negative_prompt=["a", "b"]), "negative prompts for 1 prompts"),
        (dict(strength=0.5), "strength= applies to video-to-video"),
        (dict(video=np.zeros((17, 64, 96, 3), np.uint8), strength=0.0), "strength must be a finite number in \\(0, 1\\]"),
        (dict(video=np.zeros((17, 64, 96, 3), np.uint8), strength=1.5), "strength must be a finite number in \\(0, 1\\]"),
        (dict(video=np.zeros((17, 64, 96, 3), np.uint8), image=np.zeros((64, 96, 3), np.uint8)), "not both"),
        (dict(video=np.zeros((17, 64, 96), np.uint8)), "channels last"),
        (dict(frame_rate=0), "frame_rate must be a finite number in \\(0, 1000\\]"),
        (dict(sampler="unipc"), "euler sampler only"),
        (dict(max_sequence_length=0), "max_sequence_length must be a whole number from 1 to 4096"),
        (dict(decode_noise_scale=[0.1, 0.2, 0.3]), "decode_noise_scale needs 1 value or one per video \\(1\\)"),
    ],
)
def test_bad_arguments_raise_one_line_errors(pipe, kwargs, message):
    call = dict(prompt=PROMPT, guidance_scale=2.0, seed=0, **CALL)
    call.update(kwargs)
    with pytest.raises(KinemaError, match=message) as e:
        pipe(**call)
    assert "\n" not in str(e.value)


def test_untimed_vae_refuses_decode_settings(pipe):
    """An LTX-Video 0.9.0 VAE has no timestep-conditioned decoder: no decode settings, no decode noise."""
    config = LTXVAEConfig(latent_channels=4, block_out_channels=(4, 8, 16, 16), layers_per_block=(1, 1, 1, 1, 1),
                          decoder_block_out_channels=(4, 8, 16, 16), decoder_layers_per_block=(1, 1, 1, 1, 1))  # fmt: skip
    torch.manual_seed(0)
    old = LTXPipeline(pipe.transformer, LTXVAE(config), pipe.text_encoder, pipe.sampler)
    out = old(prompt=PROMPT, guidance_scale=1.0, seed=0, **CALL)
    assert out.frames.shape == (1, 17, 64, 96, 3)
    with pytest.raises(KinemaError, match="not timestep-conditioned"):
        old(prompt=PROMPT, decode_timestep=0.05, **CALL)


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------
def test_original_layout_errors(model_dir, tmp_path):
    root = save_original_ltx_layout(model_dir, tmp_path / "ltx")
    shutil.rmtree(root / "tokenizer")
    with pytest.raises(CheckpointError, match="missing component 'tokenizer'.*PixArt-alpha/PixArt-XL-2-1024-MS"):
        detect_layout(root)
    root2 = save_original_ltx_layout(model_dir, tmp_path / "two")
    shutil.copy(root2 / "ltx-video-2b-v0.9.1.safetensors", root2 / "copy.safetensors")
    with pytest.raises(CheckpointError, match="holds 2 LTX-Video checkpoints"):
        detect_layout(root2)
    (root2 / "copy.safetensors").write_bytes(b"\x07" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        detect_layout(root2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="LTX-Video single-file checkpoint"):
        detect_layout(empty)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
SMALL = ["--size", "96x64", "--frames", "17", "--steps", "2", "--guidance", "3", "-q"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    Image.fromarray(_video(1)[0]).save(d / "first.png")
    Image.fromarray(_video(1)[0]).save(d / "first.jpg")
    write_video(_video(20), d / "input.mp4", fps=30)
    (d / "not-an-image.png").write_text("hello")
    return d


@pytest.mark.parametrize("name", ["first.png", "first.jpg"])
def test_cli_image_to_video(model_dir, media, tmp_path, name):
    out = tmp_path / "clip.mp4"
    assert main(["generate", PROMPT, "--model", str(model_dir), "--image", str(media / name), "-o", str(out), *SMALL]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 96, 3) and fps == 24


def test_cli_video_to_video_keeps_the_input_frame_rate(model_dir, media, tmp_path):
    out = tmp_path / "clip.mp4"
    args = ["generate", PROMPT, "--model", str(model_dir), "--input", str(media / "input.mp4"), "--strength", "0.6"]
    assert main([*args, "-o", str(out), "--size", "96x64", "--steps", "2", "-q"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (17, 64, 96, 3) and fps == 30  # 20 input frames: 17 used


def test_cli_text_to_video_and_info(model_dir, tmp_path, capsys):
    from diffusers import LTXVideoTransformer3DModel

    out = tmp_path / "clip.mp4"
    assert main(["generate", PROMPT, "--model", str(model_dir), "-o", str(out), *SMALL]) == 0
    assert read_video(out)[0].shape == (17, 64, 96, 3)
    assert main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    ref = LTXVideoTransformer3DModel.from_pretrained(str(model_dir / "transformer"))
    assert info["architecture"] == "LTXTransformer" and info["pipeline"] == "ltx-video"
    assert info["parameters"] == sum(p.numel() for p in ref.parameters())
    original = save_original_ltx_layout(model_dir, tmp_path / "original")
    assert main(["info", str(original)]) == 0
    info_original = json.loads(capsys.readouterr().out)
    assert info_original["format"] == "ltx-original" and info_original["parameters"] == info["parameters"]
    assert main(["info", "spectro-2b"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 1_923_385_472


@pytest.mark.parametrize(
    "case, message",
    [
        (["--frames", "30"], "num_frames must be 8k\\+1 for this VAE.*got 30, try 25 or 33"),
        (["--size", "100x64"], "width must be a positive multiple of 32"),
        (["--image", "MEDIA/missing.png"], "image file not found"),
        (["--image", "MEDIA/not-an-image.png"], "could not read image"),
        (["--input", "MEDIA/missing.mp4"], "video file not found"),
        (["--input", "MEDIA/not-an-image.png"], "could not read video"),
        (["--input", "MEDIA/input.mp4", "--strength", "1.5"], "--strength must be a finite number in \\(0, 1\\]"),
        (["--input", "MEDIA/input.mp4", "--strength", "0"], "--strength must be a finite number in \\(0, 1\\]"),
        (["--strength", "0.5"], "--strength applies to video-to-video"),
        (["--image", "MEDIA/first.png", "--input", "MEDIA/input.mp4"], "not both"),
        (["--input", "MEDIA/input.mp4", "--frames", "25"], "has 20 frames, fewer than num_frames=25"),
        (["--model", "spectro-2b"], "preset without weights.*LTX-Video"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(model_dir, media, tmp_path, capsys, case, message):
    args = ["generate", PROMPT, "--model", str(model_dir), "-o", str(tmp_path / "x.mp4"), *SMALL]
    case = [c.replace("MEDIA", str(media)) for c in case]
    for i in range(0, len(case), 2):
        if case[i] in args:
            args[args.index(case[i]) + 1] = case[i + 1]
        else:
            args += case[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


class TestLTXPipelineContract(PipelineContract):
    """tests/contracts.py: the same video for the same seed, progress and cancellation."""

    call = dict(prompt=PROMPT, guidance_scale=3.0, **CALL)
    stages = (("text", 1), ("denoise", CALL["num_inference_steps"]), ("decode", 1))
