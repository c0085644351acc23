"""The pixel-dit family end to end: a tiny run packaged as a kinema model, loaded by name-free
layout detection, sampled with DDIM and DDPM, checked like every family, and equal to diffusers'
schedulers driving the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import kinema
from kinema.cli import main as cli_main
from kinema.errors import Cancelled, CheckpointError, KinemaError
from kinema.pipelines.loading import check_before_loading, load_pipeline, resolve_model
from kinema.pipelines.package import package_trained_model
from kinema.training import train
from tests.contracts import PipelineContract

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pixel")
    cfg = {**yaml.safe_load((REPO / "configs" / "tiny-pixel.yaml").read_text()), "out_dir": str(base / "run"), "steps": 4}
    exported = train(cfg, progress=False)
    # adaLN-zero: 4 steps leave the modulation small; the tests need a model whose output depends on its inputs
    return package_trained_model(exported, base / "model", defaults={"num_inference_steps": 4, "fps": 8})


@pytest.fixture(scope="module")
def pipe(model_dir):
    p = load_pipeline(model_dir)
    with torch.no_grad():
        for name, param in p.transformer.named_parameters():
            if "modulation" in name or name.startswith("head."):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return p


def test_card_layout_and_defaults(model_dir, pipe):
    card = json.loads((model_dir / "kinema.json").read_text())
    assert card["pipeline"] == "pixel-dit" and card["text_encoder"] == {"kind": "bpe", "max_length": 8}
    assert card["sampler"]["name"] == "ddim" and card["sampler"]["prediction_type"] == "epsilon" and card["sampler"]["beta_end"] == 0.02
    assert sorted(p.name for p in model_dir.iterdir()) == ["kinema.json", "tokenizer", "transformer"]
    layout = resolve_model(str(model_dir))
    assert layout.format == "kinema" and set(layout.components) == {"transformer", "tokenizer"} and layout.codec_path is None
    out = pipe("a red square moving right", seed=0, progress_bar=False)
    assert out.frames.shape == (1, 4, 16, 16, 3) and out.frames.dtype == np.uint8 and out.fps == 8
    assert pipe.rules.samplers == ("ddpm", "ddim") and pipe.rules.temporal_multiple == 2 and pipe.rules.frames_offset == 0


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_the_same_seed_gives_the_same_video_and_each_video_its_own_generator(pipe, sampler):
    kw = dict(sampler=sampler, num_inference_steps=3, progress_bar=False, output_type="pt")
    a = pipe(["a red square moving right", "a blue square moving left"], seed=5, **kw).frames
    b = pipe(["a red square moving right", "a blue square moving left"], seed=5, **kw).frames
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe(["a red square moving right", "a blue square moving left"], seed=6, **kw).frames)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    both = pipe(["a red square moving right", "a blue square moving left"], generator=gens(), **kw).frames
    alone = pipe(["a blue square moving left"], generator=[gens()[1]], **kw).frames
    # DDPM's step noise too is drawn per video. The frames agree to a grey level, not bit for bit: a batch
    # of two and a batch of one take other matmul blockings on some CPUs (AVX-512), as they may anywhere.
    assert (both[1].int() - alone[0].int()).abs().max() <= 1 and (both[1] != alone[0]).float().mean() < 0.01


def test_ddpm_draws_fresh_noise_and_ddim_eta_zero_does_not(pipe):
    calls = []
    real = torch.randn

    def counting(*args, **kw):
        calls.append(args[0] if args else kw.get("size"))
        return real(*args, **kw)

    torch.randn = counting
    try:
        pipe("a red square", seed=0, sampler="ddim", num_inference_steps=3, progress_bar=False)
        ddim = len(calls)
        calls.clear()
        pipe("a red square", seed=0, sampler="ddpm", num_inference_steps=3, progress_bar=False)
        ddpm = len(calls)
    finally:
        torch.randn = real
    assert ddpm == ddim + 3  # trailing spacing: 999, 666, 333; diffusers adds noise at every t > 0


def test_batched_guidance_equals_two_passes_and_guidance_one_runs_no_uncond(pipe):
    kw = dict(seed=3, num_inference_steps=3, progress_bar=False, output_type="latent")
    a = pipe("a green square moving up", batch_cfg=False, **kw).latents
    b = pipe("a green square moving up", batch_cfg=True, **kw).latents
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    seen = []
    real = pipe.transformer.forward
    pipe.transformer.forward = lambda x, t, ctx, mask=None: (seen.append(x.shape[0]), real(x, t, ctx, mask))[1]
    try:
        pipe("a green square", guidance_scale=1.0, **kw)
    finally:
        del pipe.transformer.forward
    assert seen == [1, 1, 1]


def test_precomputed_states_equal_the_prompt(pipe):
    states = pipe.text_encoder(["a red square moving right"])
    empty = pipe.text_encoder([""])
    kw = dict(seed=1, num_inference_steps=2, progress_bar=False, output_type="latent")
    a = pipe("a red square moving right", **kw).latents
    b = pipe(prompt_embeds=states, negative_prompt_embeds=empty, **kw).latents
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_other_sizes_and_lengths_follow_the_patch_rule(pipe):
    out = pipe("a red square", height=24, width=8, num_frames=6, num_inference_steps=2, seed=0, progress_bar=False)
    assert out.frames.shape == (1, 6, 24, 8, 3)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"num_frames": 5}, r"^num_frames must be 2k for this model's time patch \(2, 4, 6, \.\.\.\); got 5, try 4 or 6$"),
        ({"num_frames": 0}, r"num_frames"),
        ({"height": 18}, r"^height must be a positive multiple of 4 for this model; got 18, try 16 or 20$"),
        ({"shift": 3.0}, r"^shift does not apply to a pixel-dit model"),
        ({"sampler": "unipc"}, r"^sampler must be one of ddpm, ddim for a pixel-dit model; got 'unipc'$"),
        ({"num_inference_steps": 1001}, r"^num_inference_steps must be at most 1,000 for this model \(its training steps\); got 1,001$"),
        ({"temperature": 0.5}, r"^temperature does not apply to a pixel-dit model"),
        ({"latents": torch.zeros(1, 3, 4, 16, 8)}, r"^latents .* must have shape \(1, 3, 4, 16, 16\)"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 3, 5)}, r"prompt_embeds .*must have shape \(any, any, 16\)"),
        ({"image": "x.png"}, r"image"),
    ],
)
def test_bad_requests_are_one_line_errors(pipe, kw, message):
    kw = {"prompt": "a red square", "progress_bar": False, **kw}
    with pytest.raises(KinemaError, match=message):
        pipe(**kw)


def test_requests_are_checked_before_loading(model_dir):
    layout = resolve_model(str(model_dir))
    assert check_before_loading(layout).num_frames == 4
    with pytest.raises(KinemaError, match=r"num_frames must be 2k"):
        check_before_loading(layout, num_frames=3)
    with pytest.raises(KinemaError, match=r"sampler must be one of ddpm, ddim"):
        check_before_loading(layout, sampler="euler")
    with pytest.raises(KinemaError, match=r"num_inference_steps must be at most 1,000"):
        check_before_loading(layout, num_inference_steps=2000)


def test_progress_and_cancel(pipe):
    seen = []

    def stop(progress):
        seen.append((progress.stage, progress.step))
        if progress.stage == "denoise" and progress.step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        pipe("a red square", num_inference_steps=4, seed=0, callback=stop, progress_bar=False)
    assert ("text", 1) in seen and seen[-1] == ("denoise", 2)


def test_the_loop_equals_diffusers_schedulers_driving_the_same_model(pipe):
    diffusers = pytest.importorskip("diffusers")
    from kinema.pipelines.base import initial_noise

    for name, cls in (("ddim", diffusers.DDIMScheduler), ("ddpm", diffusers.DDPMScheduler)):
        sched = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
                    timestep_spacing="trailing", clip_sample=True)  # fmt: skip
        steps, g = 4, 7.5
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(9)
        x = initial_noise((1, 3, 4, 16, 16), gen, torch.device("cpu"))
        cond, uncond = pipe.encode_text(["a red square moving right"]), pipe.encode_text([""])
        c, u = pipe.transformer.prepare_context(cond.states, cond.mask), pipe.transformer.prepare_context(uncond.states, uncond.mask)
        for t in sched.timesteps:
            tt = t.expand(1)
            e_u, e_c = pipe.transformer(x, tt, u), pipe.transformer(x, tt, c)
            x = sched.step(e_u + g * (e_c - e_u), t, x, generator=gen).prev_sample
        ours = pipe("a red square moving right", sampler=name, num_inference_steps=steps, guidance_scale=g, seed=9,
                    progress_bar=False, output_type="latent").latents  # fmt: skip
        torch.testing.assert_close(ours, x, rtol=0, atol=1e-5, msg=name)


def test_cli_generate_info_and_package(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert cli_main(["generate", "--model", str(model_dir), "a red square moving right", "--out", str(out), "--steps", "2", "--threads", "1"]) == 0
    assert out.is_file() and out.stat().st_size > 0
    capsys.readouterr()
    assert cli_main(["info", "ttv-1b"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pipeline"] == "pixel-dit" and info["parameters"] == 1_130_991_360 and info["config"]["patch_size"] == [2, 16, 16]
    assert cli_main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["components"]) == {"transformer", "tokenizer"}
    run_model = model_dir.parent / "run" / "model"
    assert cli_main(["package", str(run_model), "--out", str(tmp_path / "m"), "--sampler", "ddpm", "--steps", "30", "--fps", "12"]) == 0
    card = json.loads((tmp_path / "m" / "kinema.json").read_text())
    assert card["sampler"]["name"] == "ddpm" and card["defaults"]["num_inference_steps"] == 30 and card["defaults"]["fps"] == 12
    assert cli_main(["package", str(run_model), "--out", str(tmp_path / "n"), "--vae", str(tmp_path)]) == 2
    assert "--vae does not apply" in capsys.readouterr().err and not (tmp_path / "n").exists()
    assert cli_main(["package", str(run_model), "--out", str(tmp_path / "n"), "--shift", "2"]) == 2
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "kinema.json").write_text(json.dumps({**json.loads((d / "kinema.json").read_text()), "text_encoder": {"kind": "minilm", "max_length": 8}})),
         r"a pixel-dit model's text encoder is bpe; got 'minilm'"),
        (lambda d: shutil.rmtree(d / "tokenizer"), r"missing component 'tokenizer' \(no tokenizer/tokenizer.json\)"),
        (lambda d: (d / "kinema.json").write_text(json.dumps({**json.loads((d / "kinema.json").read_text()), "sampler": {"name": "unipc"}})),
         r"sampler: unknown sampler 'unipc' for a DDPM model"),
        (lambda d: (d / "tokenizer" / "tokenizer.json").write_text("{}"), r"not a tokenizers tokenizer.json"),
    ],
)
def test_bad_model_directories_are_refused(model_dir, tmp_path, change, message):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    change(copy)
    with pytest.raises(CheckpointError, match=message):
        kinema.load_pipeline(str(copy))


def test_a_wan_card_cannot_name_the_bpe_encoder(tmp_path):
    from kinema.checkpoints.layouts import check_card

    card = {"format": "kinema", "pipeline": "wan-t2v", "text_encoder": {"kind": "bpe", "max_length": 8}, "sampler": {"name": "unipc"}}
    with pytest.raises(CheckpointError, match=r"a wan-t2v model's text encoder is minilm; got 'bpe'"):
        check_card(card, tmp_path / "kinema.json")


class TestPixelPipelineContract(PipelineContract):
    """tests/contracts.py: the same video for the same seed, progress and cancellation."""

    call = dict(prompt="a red square moving right", num_inference_steps=3, sampler="ddpm")  # DDPM: step noise from the seed too
    stages = (("text", 1), ("denoise", 3), ("decode", 1))


def test_step_caching_off_is_the_uncached_video_and_on_skips_blocks(pipe):
    plain = pipe("a red circle moving left", seed=2, progress_bar=False)
    zero = pipe("a red circle moving left", seed=2, progress_bar=False, cache_threshold=0.0)
    assert torch.equal(plain.latents, zero.latents) and zero.cache["skipped"] == 0
    cached = pipe("a red circle moving left", seed=2, progress_bar=False, cache_threshold=1.0)
    assert cached.cache["skipped"] > 0 and not any("forward" in vars(b) for b in pipe.transformer.blocks)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_extend_in_pixel_space(pipe, sampler):
    """The pixel family continues a video by the same rule as Wan's, in pixel space: the known
    frames put back at every step's level (the DDPM step onto the clean sample included)."""
    clip = pipe("a red circle moving left", seed=0, sampler=sampler, progress_bar=False).frames[0]  # (F, H, W, 3)
    f = clip.shape[0]
    out = pipe.extend(clip, "a red circle moving left", num_frames=2, overlap=2, seed=1, sampler=sampler, progress_bar=False)
    assert out.past.shape[:2] == (1, 2)  # the window's decode of the 2 frames it was given
    assert out.frames.shape == (1, f + 2, *clip.shape[1:]) and np.array_equal(out.frames[0, :f], clip)
    assert out.latents.shape[2] == 4  # the window: 2 known frames, 2 new
    # the known frames come out of sampling as they went in (the last step puts the clean ones back)
    known = torch.from_numpy(clip[-2:]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(out.latents[0, :, :2], known, atol=1e-6)
    again = pipe.extend(clip, "a red circle moving left", num_frames=2, overlap=2, seed=1, sampler=sampler, progress_bar=False)
    assert np.array_equal(again.frames, out.frames)
    with pytest.raises(KinemaError, match="overlap must be 2k"):
        pipe.extend(clip, "x", num_frames=2, overlap=3, progress_bar=False)
