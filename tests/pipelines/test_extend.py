"""Continuing a video (kinema extend) with the shipped token model: the input comes back unchanged at
the head, the new frames follow at its frame rate, the request records the input, a replay gives the
same file; every bad value is one line, and a family that cannot extend yet says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kinema
from kinema.cli import main
from kinema.errors import KinemaError
from kinema.generation import generate
from kinema.replay import read_metadata
from kinema.request import GenerationRequest
from kinema.video import read_video, write_video

from ..reliability.conftest import assert_cli_refuses

MODEL = "shapes-ar"


@pytest.fixture(scope="module")
def pipe():
    return kinema.load_pipeline(MODEL)


@pytest.fixture(scope="module")
def clip(pipe):
    """Nine frames the model made (greedy)."""
    return pipe("a red circle moving left", num_frames=9, temperature=0, seed=0, progress_bar=False).frames[0]  # (9, 64, 64, 3)


def test_extend_keeps_the_input_and_adds_frames(pipe, clip):
    stages = []
    out = pipe.extend(clip, "a red circle moving left", num_frames=8, seed=1, progress_bar=False, callback=lambda p: stages.append((p.stage, p.step)))
    assert out.frames.shape == (1, 17, 64, 64, 3) and out.frames.dtype == np.uint8
    assert np.array_equal(out.frames[0, :9], clip)  # the input, unchanged
    assert out.latents.shape[1] == 3 + 2  # the overlap's 3 token frames (9 = 4*2 + 1), then 2 new ones
    assert ("tokens", 2) in stages and stages[-1][0] == "decode"
    again = pipe.extend(clip, "a red circle moving left", num_frames=8, seed=1, progress_bar=False)
    assert np.array_equal(again.frames, out.frames)  # the same seed, the same extension
    shorter = pipe.extend(clip, "a red circle moving left", num_frames=4, overlap=5, seed=1, progress_bar=False)
    assert shorter.frames.shape[1] == 13 and shorter.latents.shape[1] == 2 + 1 and np.array_equal(shorter.frames[0, :9], clip)
    fast = pipe.extend(clip, "a red circle moving left", num_frames=4, fps=30.0, progress_bar=False)
    assert fast.fps == 30.0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(num_frames=6), "multiple of 4"),
        (dict(num_frames=8, overlap=4), "overlap must be 4k\\+1"),
        (dict(num_frames=8, overlap=13), "overlap is 13 frames but the video has 9"),
        (dict(num_frames=0), "num_frames"),
        (dict(num_frames=8, height=32), "takes no argument|height"),
    ],
)
def test_extend_refuses_bad_values(pipe, clip, kwargs, pattern):
    with pytest.raises(KinemaError, match=pattern) as info:
        pipe.extend(clip, "a red circle", progress_bar=False, **kwargs)
    assert "\n" not in str(info.value)


def test_extend_refuses_a_video_of_another_size_or_a_batch(pipe, clip):
    with pytest.raises(KinemaError, match="resize it first"):
        pipe.extend(clip[:, :32], "a red circle", num_frames=4, progress_bar=False)
    with pytest.raises(KinemaError, match="one video"):
        pipe.extend(np.stack([clip, clip]), "a red circle", num_frames=4, progress_bar=False)


@pytest.mark.parametrize("height, width, hint", [(70, 70, "64x64 or 80x80"), (64, 40, "32x64 or 48x80"), (8, 64, "64x16 or 80x32")])
def test_a_diffusion_model_refuses_a_video_whose_sides_are_not_its_stride(height, width, hint):
    wan = kinema.load_pipeline("shapes")  # sides in multiples of 16
    video = np.zeros((5, height, width, 3), np.uint8)
    with pytest.raises(KinemaError, match=f"the video is {width}x{height}; this model makes frames whose sides are multiples of 16: resize it first \\(to {hint}\\)"):
        wan.extend(video, "a red circle moving left", num_frames=4, progress_bar=False)


def test_a_still_image_continues_at_the_model_frame_rate(clip, tmp_path):
    """FFmpeg reads a picture as one frame at a made-up 25 fps: a picture has no frame rate, so the
    continuation takes the model's; an animated GIF keeps its own."""
    from PIL import Image

    Image.fromarray(clip[0]).save(tmp_path / "still.png")
    frames, fps = read_video(tmp_path / "still.png")
    assert frames.shape == (1, 64, 64, 3) and fps == 0.0
    Image.fromarray(clip[0]).save(tmp_path / "still.webp", lossless=True)
    assert read_video(tmp_path / "still.webp")[1] == 0.0
    gif = [Image.fromarray(f) for f in clip[:3]]
    gif[0].save(tmp_path / "moving.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    assert read_video(tmp_path / "moving.gif")[1] == 10.0
    assert main(["extend", str(tmp_path / "still.png"), "a red circle moving left", "--model", MODEL, "--frames", "4", "-q"]) == 0
    frames, fps = read_video(tmp_path / "still-extended.mp4")
    assert frames.shape == (5, 64, 64, 3) and fps == kinema.load_pipeline(MODEL).fps


def test_command_line_extend_info_and_replay(clip, tmp_path, capsys):
    source = tmp_path / "in.mp4"
    write_video(clip, source, fps=12)
    assert main(["extend", str(source), "a red circle moving right", "--model", MODEL, "--frames", "4", "--seed", "3", "-q"]) == 0
    out = tmp_path / "in-extended.mp4"
    frames, fps = read_video(out)
    assert frames.shape == (13, 64, 64, 3) and fps == 12  # the input's frame rate
    meta = read_metadata(out)
    assert meta["request"]["extend"] == str(source) and meta["request"]["overlap"] == 9 and meta["request"]["num_frames"] == 4
    assert set(meta["inputs"]) == {"extend"}
    again = tmp_path / "again.mp4"
    assert main(["replay", str(out), "-o", str(again), "-q"]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert_cli_refuses(["extend", str(source), "x", "--model", MODEL, "-o", str(source)], capsys, tmp_path, "is the input video")
    assert_cli_refuses(["extend", str(tmp_path / "none.mp4"), "x", "--model", MODEL], capsys, tmp_path, "not found")
    assert_cli_refuses(["extend", str(source), "x", "--model", MODEL, "--frames", "5"], capsys, tmp_path, "--frames \\(new frames\\) must be a multiple of 4")
    assert_cli_refuses(["extend", str(source), "x", "--model", MODEL, "--overlap", "20"], capsys, tmp_path, "--overlap is 20 frames but the video has 9")
    assert_cli_refuses(["extend", str(source)], capsys, tmp_path, "no prompt")
    with pytest.raises(KinemaError, match="height and width come from the video to continue"):
        generate(GenerationRequest("x", model=MODEL, extend=str(source), width=32, height=32), write=False, progress_bar=False)
    assert_cli_refuses(["extend", str(source), "x", "--model", MODEL, "--steps", "4"], capsys, tmp_path, "--steps does not apply to a token-ar model")
    # the default model (Wan family) extends from the command line too, with its diffusion flags
    wan_out = tmp_path / "wan.mp4"
    assert main(["extend", str(source), "a red circle moving right", "--frames", "4", "--steps", "2", "--overlap", "5", "-o", str(wan_out), "-q"]) == 0
    assert read_video(wan_out)[0].shape == (13, 64, 64, 3) and read_metadata(wan_out)["request"]["num_inference_steps"] == 2


def test_the_wan_family_extends_by_putting_the_known_latents_back(tmp_path):
    """The shipped Wan-family model: the input's last frames (VAE-encoded) fix the window's first
    latent frames (held nearly clean: the model was trained with a given past); the input comes back unchanged."""
    pipe = kinema.load_pipeline("shapes")
    clip = pipe("a blue square moving up", num_frames=17, num_inference_steps=4, seed=0, progress_bar=False).frames[0]
    out = pipe.extend(clip, "a blue square moving up", num_frames=8, num_inference_steps=4, seed=1, progress_bar=False)
    assert out.frames.shape == (1, 25, 64, 64, 3) and np.array_equal(out.frames[0, :17], clip)
    assert out.latents.shape[2] == 5 + 2  # the default overlap, 17 frames (half the 33-frame clip): 5 latent frames; 8 new: 2
    assert out.past.shape == (1, 17, 64, 64, 3)  # the window's decode of the past it was given: close to it, not it
    assert 0 < np.abs(out.past.astype(int) - clip[-17:].astype(int)).mean() < 4
    assert pipe.extend(clip, "x", num_frames=8, num_inference_steps=2, output_type="latent", progress_bar=False).past is None
    assert np.array_equal(pipe.extend(clip, "a blue square moving up", num_frames=8, num_inference_steps=4, seed=1, progress_bar=False).frames, out.frames)
    other = pipe.extend(clip, "a blue square moving up", num_frames=8, overlap=5, num_inference_steps=4, seed=1, progress_bar=False)
    assert other.latents.shape[2] == 2 + 2 and not np.array_equal(other.frames, out.frames)
    with pytest.raises(KinemaError, match="overlap must be at most 17"):
        pipe.extend(np.concatenate([clip, clip]), "x", num_frames=8, overlap=21, progress_bar=False)


def test_a_model_trained_with_a_given_past_sees_it_held_at_its_level_and_told_its_time():
    """A card whose sampler has past_sigma (a model trained with objective.past_share or
    past_from_data): the known latent frames stay at that level from the first step (not the
    step's), the model gets a time per latent frame (the known ones at most past_sigma's), and the
    input still comes back unchanged; without it the times are one per clip."""
    import dataclasses

    pipe = kinema.load_pipeline("shapes")
    assert pipe.sampler.past_sigma == 0.1  # the shipped model was fine-tuned so (configs/shapes-transformer-past.yaml)
    clip = pipe("a blue square moving up", num_frames=17, num_inference_steps=2, seed=0, progress_bar=False).frames[0]
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append((args[0].clone(), args[1].clone())))
    spec = pipe.sampler
    try:
        pipe.sampler = dataclasses.replace(spec, past_sigma=None)  # as a model trained on whole clips extends
        plain = pipe.extend(clip, "a blue square moving up", num_frames=8, num_inference_steps=3, guidance_scale=1.0, seed=1, progress_bar=False)
        assert [t.shape for _, t in calls] == [(1,)] * 3
        assert not torch.equal(calls[0][0][:, :, :5], calls[1][0][:, :, :5])  # the known frames follow the step's level
        calls.clear()
        pipe.sampler = spec
        out = pipe.extend(clip, "a blue square moving up", num_frames=8, num_inference_steps=3, guidance_scale=1.0, seed=1, progress_bar=False)
    finally:
        pipe.sampler = spec
        hook.remove()
    assert out.frames.shape == (1, 25, 64, 64, 3) and np.array_equal(out.frames[0, :17], clip)
    assert len(calls) == 3
    for x, t in calls:
        assert t.shape == (1, 7)  # 5 known latent frames, 2 new
        assert torch.allclose(t[0, :5], t[0, 5:].min().clamp(max=100.0).expand(5)) and (t[0, 5:] == t[0, 5]).all()
        assert torch.equal(x[:, :, :5], calls[0][0][:, :, :5])  # held at one level with one noise throughout
    assert (calls[0][1][0, 5] > 100.0) and not np.array_equal(out.frames, plain.frames)


def test_ltx_video_extends_with_frame_conditioning(tmp_path, capsys):
    """A tiny random LTX-Video: the input's last frames condition the window's first frames (told
    clean at every step, as a picture is for image-to-video); from the command line too."""
    from ..helpers import save_diffusers_ltx_pipeline

    save_diffusers_ltx_pipeline(tmp_path / "ltx")
    capsys.readouterr()  # diffusers' save progress
    pipe = kinema.load_pipeline(tmp_path / "ltx")
    clip = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    out = pipe.extend(clip, "a red ball", num_frames=8, num_inference_steps=2, seed=0, progress_bar=False)
    assert out.frames.shape == (1, 17, 32, 32, 3) and np.array_equal(out.frames[0, :9], clip)
    assert out.latents.shape[2] == 2 + 1  # 9 known frames (8k+1: 2 latent frames), 8 new (1)
    assert out.past.shape == (1, 9, 32, 32, 3) and out.past.dtype == np.uint8  # the window's own decode of the 9 it was given
    assert np.abs(out.past.astype(int) - clip.astype(int)).mean() > 0  # a rendering, not the input handed back
    assert np.array_equal(pipe.extend(clip, "a red ball", num_frames=8, num_inference_steps=2, seed=0, progress_bar=False).frames, out.frames)
    with pytest.raises(KinemaError, match="extend takes no image"):
        pipe.extend(clip, "a red ball", num_frames=8, image=clip[0], progress_bar=False)
    source = tmp_path / "in.mp4"
    write_video(clip, source, fps=24)
    assert main(["extend", str(source), "a red ball", "--model", str(tmp_path / "ltx"), "--frames", "8", "--steps", "2", "-q"]) == 0
    frames, fps = read_video(tmp_path / "in-extended.mp4")
    assert frames.shape == (17, 32, 32, 3) and fps == 24


def test_a_family_that_cannot_extend_says_so():
    import dataclasses

    from kinema.checkpoints.layouts import resolve_model

    rules = dataclasses.replace(resolve_model("shapes").rules(), family="wan-i2v", supports_extend=False)
    with pytest.raises(KinemaError, match="a wan-i2v model cannot continue a video yet"):
        GenerationRequest("x", extend="in.mp4").check_abilities(rules)


def test_request_checks(tmp_path):
    from kinema.checkpoints.layouts import resolve_model

    with pytest.raises(KinemaError, match="overlap applies to continuing a video"):
        GenerationRequest("x", overlap=5).checked(resolve_model("shapes").rules())
    with pytest.raises(KinemaError, match="give extend .* or image"):
        GenerationRequest("x", extend="a.mp4", image="b.png").checked_alone()
    with pytest.raises(KinemaError, match="overlap must be a positive integer"):
        GenerationRequest("x", extend="a.mp4", overlap=0).checked_alone()
    with pytest.raises(KinemaError, match="not found"):
        generate(GenerationRequest("x", model="shapes", extend=str(tmp_path / "a.mp4")), write=False, progress_bar=False)
