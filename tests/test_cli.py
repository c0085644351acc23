"""The command line: generate writes a playable mp4; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import kinema

from kinema.cli import main
from kinema.video import read_video
from tests.helpers import save_diffusers_wan_pipeline

SMALL = ["--size", "32x32", "--frames", "9", "--steps", "2", "--guidance", "3", "-q"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "model"
    save_diffusers_wan_pipeline(root)
    return root


def test_generate_writes_h264_mp4_at_model_fps(model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(model_dir), "--output", str(out), *SMALL]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (9, 32, 32, 3) and fps == 16
    import av

    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_generate_timings(model_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(model_dir), "-o", str(out), "--timings", *SMALL]) == 0
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert set(report["timings_s"]) == {"load", "text", "denoise", "decode", "write"}
    assert all(v >= 0 for v in report["timings_s"].values()) and report["threads"] >= 1


def test_generate_same_seed_same_file_frames(model_dir, tmp_path):
    args = ["--prompt", "a blue square moving up", "--model", str(model_dir), "--seed", "5", *SMALL]
    main(["generate", *args, "-o", str(tmp_path / "a.mp4")])
    main(["generate", *args, "-o", str(tmp_path / "b.mp4")])
    assert (read_video(tmp_path / "a.mp4")[0] == read_video(tmp_path / "b.mp4")[0]).all()


def _broken_copy(model_dir, tmp_path, how):
    root = tmp_path / "broken"
    shutil.copytree(model_dir, root)
    if how == "truncated":
        f = root / "transformer" / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    elif how == "corrupt":
        (root / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x07" * 64)
    elif how == "missing":
        shutil.rmtree(root / "vae")
    elif how == "extra-key":
        from safetensors.torch import load_file, save_file

        f = root / "transformer" / "diffusion_pytorch_model.safetensors"
        sd = load_file(f)
        sd["blocks.0.mystery.weight"] = torch.zeros(1)
        save_file(sd, f)
    return root


@pytest.mark.parametrize(
    "case, message",
    [
        (["--frames", "30"], "num_frames must be 4k\\+1.*got 30, try 29 or 33"),
        (["--size", "33x32"], "width must be a positive multiple of 16"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--steps", "-3"], "--steps must be a positive integer"),
        (["--model", "/no/such/dir"], "neither a model directory nor a shipped model"),
        (["--model", "wan2.1-t2v-1.3b"], "preset without weights"),
        (["--model", "not-a-preset"], "neither a model directory nor a shipped model"),
        (["--output", "clip.gif"], "must end in .mp4"),
        (["--dtype", "int7"], "unknown dtype"),
        (["--image", "first.png"], "--image needs a model that does image-to-video.*wan-t2v model \\(text-to-video only\\)"),
        (["--input", "in.mp4"], "--input needs a model that does video-to-video"),
        (["--input", "in.mp4", "--strength", "2"], "--strength must be a finite number in \\(0, 1\\]"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--dtype", "int8"], "CUDA|unknown dtype"),
        (["--temperature", "0.5"], "--temperature does not apply to .*a wan-t2v model; its sampling options are --steps, --shift, --sampler, --cache"),
        (["--top-k", "3"], "--top-k does not apply"),
        (["--quantize", "fp8"], "fp8 quantisation is available for token-ar models; .* is a wan-t2v model"),
        (["--quantize", "int4"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, case, message):
    args = ["generate", "a red circle", "--model", str(model_dir), "-o", str(tmp_path / "x.mp4"), *SMALL]
    for i in range(0, len(case), 2):  # later flags win in argparse; replace --model in place for clarity
        if case[i] in args:
            args[args.index(case[i]) + 1] = case[i + 1]
        else:
            args += case[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "not a readable safetensors file"),
        ("corrupt", "not a readable safetensors file"),
        ("missing", "missing component 'vae'"),
        ("extra-key", "blocks.0.mystery.weight"),
    ],
)
def test_broken_checkpoints_are_one_line_errors(model_dir, tmp_path, capsys, how, message):
    root = _broken_copy(model_dir, tmp_path, how)
    assert main(["generate", "a red circle", "--model", str(root), "-o", str(tmp_path / "x.mp4"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_pth_that_needs_code_is_refused_from_the_cli(model_dir, tmp_path, capsys):
    """An original-layout directory whose VAE .pth would run code when unpickled."""
    from tests.helpers import Evil, save_original_wan_layout

    root = save_original_wan_layout(model_dir, tmp_path / "original")
    torch.save({"encoder.conv1.weight": Evil()}, root / "Wan2.1_VAE.pth")
    assert main(["generate", "a red circle", "--model", str(root), "-o", str(tmp_path / "x.mp4"), *SMALL]) == 2
    err = capsys.readouterr()
    assert "unpickle code" in err.err and len(err.err.strip().splitlines()) == 1
    assert "must never run" not in err.out


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "kinema.cli", "generate", "x", "--model", str(tmp_path / "nope"), "--frames", "8"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_info_preset_and_directory(model_dir, capsys):
    assert main(["info", "wan2.1-t2v-1.3b"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 1_418_996_800 and info["architecture"] == "WanTransformer"
    assert main(["info", "wan2.1-t2v-14b"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 14_288_491_584
    assert main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel.from_pretrained(str(model_dir / "transformer"))
    assert info["parameters"] == sum(p.numel() for p in ref.parameters())
    assert info["format"] == "diffusers"
    assert set(info["components"]) == {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert main(["info", "nonsense"]) == 2


def test_info_original_layout(model_dir, tmp_path, capsys):
    from tests.helpers import save_original_wan_layout

    root = save_original_wan_layout(model_dir, tmp_path / "original")
    assert main(["info", str(model_dir)]) == 0
    diffusers_info = json.loads(capsys.readouterr().out)
    assert main(["info", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "wan-original" and info["parameters"] == diffusers_info["parameters"]
    assert info["components"]["vae"]["path"].endswith("Wan2.1_VAE.pth")
    assert info["components"]["transformer"]["path"].endswith("diffusion_pytorch_model.safetensors")


def test_eval_reference_clips_score_100_percent(tmp_path, capsys):
    report_file = tmp_path / "report.json"
    args = ["eval", "--reference", "--out", str(tmp_path / "ref"), "--limit", "6", "--per-prompt", "2", "--json", str(report_file)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held_out" in out and "overall" in out  # the table
    report = json.loads(report_file.read_text())
    assert report["all"]["n"] == 12 and report["all"]["overall"] == 1.0
    prompts = [c["prompt"] for c in report["clips"]]
    assert prompts[0] == prompts[1] != prompts[2] and len(set(prompts)) == 6  # two clips per prompt, in a row
    assert main(["eval", "--clips", str(tmp_path / "ref")]) == 0  # the same folder, read back
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["all"]["overall"] == 1.0


def test_eval_generates_with_a_model(model_dir, tmp_path, capsys):
    out_dir = tmp_path / "gen"
    args = ["eval", "--model", str(model_dir), "--out", str(out_dir), "--size", "32", "--frames", "9", "--steps", "2", "--limit", "3"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["all"]["n"] == 3  # a random model follows no prompt; the run itself must work
    assert len(list(out_dir.glob("*.mp4"))) == 3 and (out_dir / "prompts.jsonl").is_file()


def test_eval_reconstructs_reference_clips_through_a_models_codec(model_dir, ar_model_dir, tmp_path, capsys):
    import kinema
    from kinema.data.shapes import render_clip, sample_spec
    from kinema.video import to_uint8

    out_dir = tmp_path / "rec"
    args = ["eval", "--reconstruct", str(model_dir), "--out", str(out_dir), "--frames", "9", "--limit", "2"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["all"]["n"] == 2
    clips = sorted(out_dir.glob("*.mp4"))
    assert len(clips) == 2 and read_video(clips[0])[0].shape == (9, 64, 64, 3)
    # the round trip is the VAE's encode (posterior mean) and decode of the rendered clip
    pipe = kinema.load_pipeline(str(model_dir), device="cpu")
    clip = render_clip(sample_spec("red", "circle", "left", np.random.default_rng(0)), 64, 9)  # (F, H, W, 3) uint8
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1  # (1, 3, F, H, W)
    assert np.array_equal(pipe.reconstruct(clip[None]), to_uint8(pipe.vae.decode(pipe.vae.encode(x).mean)).numpy())
    # a token model: its tokenizer's tokens, decoded (its frames are the token grid's size)
    ar = kinema.load_pipeline(str(ar_model_dir), device="cpu")
    clip = np.random.default_rng(1).integers(0, 256, (1, 5, *ar.frame_size, 3), dtype=np.uint8)
    x = torch.from_numpy(clip).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (1, 3, F, H, W)
    assert np.array_equal(ar.reconstruct(clip), to_uint8(ar.tokenizer.decode_tokens(ar.tokenizer.encode_tokens(x))).numpy())
    assert main(["eval", "--reconstruct", str(model_dir), "--out", str(tmp_path / "x"), "--frames", "8"]) == 2  # size rules checked
    assert "error: " in capsys.readouterr().err
    from tests.helpers import save_diffusers_ltx_pipeline

    save_diffusers_ltx_pipeline(tmp_path / "ltx")  # every family's codec round-trips (VideoCodec.roundtrip)
    assert main(["eval", "--reconstruct", str(tmp_path / "ltx"), "--out", str(tmp_path / "y"), "--frames", "9", "--limit", "1"]) == 0
    ltx = kinema.load_pipeline(str(tmp_path / "ltx"), device="cpu")
    clip = render_clip(sample_spec("red", "circle", "left", np.random.default_rng(0)), 64, 9)
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1
    same_noise = torch.Generator().manual_seed(0)  # the decoder's injected noise (0.9.1), seeded: the same clip comes back the same
    assert np.array_equal(ltx.reconstruct(clip[None]), to_uint8(ltx.vae.decode(ltx.vae.encode(x).mean, generator=same_noise)).numpy())


def test_eval_reconstructs_through_a_bare_codec_folder(model_dir, ar_model_dir, tmp_path, capsys):
    """A Wan VAE's or VQ tokenizer's own folder (a training run's model/) round-trips the clips
    exactly as the model holding it does, so a codec can be judged while it trains."""
    common = ["--frames", "5", "--limit", "2"]
    assert main(["eval", "--reconstruct", str(model_dir), "--out", str(tmp_path / "model"), *common]) == 0
    assert main(["eval", "--reconstruct", str(model_dir / "vae"), "--out", str(tmp_path / "codec"), *common]) == 0
    for name in ("clip_000.mp4", "clip_001.mp4"):
        a, b = read_video(tmp_path / "model" / name)[0], read_video(tmp_path / "codec" / name)[0]
        assert a.shape == (5, 64, 64, 3) and np.array_equal(a, b)
    # A tokenizer's folder (the tiny token model's frames are 16x16, below the shapes canvas, so directly):
    import kinema
    from kinema.evaluation.cli_eval import CodecOnly

    ar = kinema.load_pipeline(str(ar_model_dir), device="cpu")
    clip = np.random.default_rng(1).integers(0, 256, (1, 5, *ar.frame_size, 3), dtype=np.uint8)
    codec = CodecOnly(ar_model_dir / "tokenizer", ar.frame_size[0], 5)
    assert np.array_equal(codec.reconstruct(clip), ar.reconstruct(clip))
    capsys.readouterr()
    # The codec's strides are checked from its config.json before it loads; anything else is named.
    assert main(["eval", "--reconstruct", str(model_dir / "vae"), "--out", str(tmp_path / "x"), "--frames", "8"]) == 2
    assert main(["eval", "--reconstruct", str(model_dir / "vae"), "--out", str(tmp_path / "x"), "--size", "60"]) == 2
    assert main(["eval", "--reconstruct", str(model_dir / "text_encoder"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "num_frames must be 4k+1 for this VAE" in err[0] and "height must be a positive multiple of 8" in err[1]
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "x").exists()


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval"]) == 2
    assert main(["eval", "--clips", str(tmp_path / "none")]) == 2
    assert main(["eval", "--model", str(tmp_path / "none")]) == 2
    assert main(["eval", "--reference", "--per-prompt", "0", "--out", str(tmp_path / "r")]) == 2
    # Sampling flags with a source that samples nothing: refused before anything is read or rendered.
    assert main(["eval", "--reconstruct", str(tmp_path / "none"), "--guidance", "6", "--top-k", "5"]) == 2
    assert main(["eval", "--reference", "--steps", "10", "--out", str(tmp_path / "r")]) == 2
    assert main(["eval", "--clips", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert not (tmp_path / "r").exists()
    err = capsys.readouterr().err
    assert "--guidance, --top-k set how --model samples; --reconstruct samples nothing, so remove them" in err
    assert "--steps set how --model samples; --reference samples nothing, so remove it" in err
    assert "--device is for --model and --reconstruct" in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


def test_output_piped_into_a_closed_reader_is_not_a_traceback():
    # `true` exits without reading, long before kinema has imported torch: its print hits a closed pipe
    res = subprocess.run(f"{sys.executable} -m kinema.cli info wan2.1-t2v-1.3b | true", shell=True, capture_output=True, text=True)
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------------
# Autoregressive (token-ar) models
# ------------------------------------------------------------------------------------------------
AR_PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def ar_model_dir(tmp_path_factory):
    from tests.pipelines.test_token_ar_pipeline import save_token_ar_model

    return save_token_ar_model(tmp_path_factory.mktemp("cli-ar"))


def test_generate_with_a_token_ar_model(ar_model_dir, tmp_path, capsys):
    out = tmp_path / "ar.mp4"
    args = ["generate", AR_PROMPT, "--model", str(ar_model_dir), "-o", str(out), "--temperature", "0.8", "--top-k", "8", "--top-p", "0.95"]
    assert main([*args, "--typical-p", "0.99", "--guidance", "2", "--timings", "-q"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (5, 16, 16, 3) and fps == 8  # the card's frames and rate; the size from the token grid
    report = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert set(report["timings_s"]) == {"load", "text", "tokens", "decode", "write"}
    fp8 = tmp_path / "fp8.mp4"
    assert main(["generate", AR_PROMPT, "--model", str(ar_model_dir), "-o", str(fp8), "--quantize", "fp8", "--frames", "9"]) == 0
    assert read_video(fp8)[0].shape == (9, 16, 16, 3)
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        (["--steps", "4"], "--steps does not apply to .*a token-ar model; its sampling options are --temperature, --top-k, --top-p, --typical-p"),
        (["--shift", "3"], "--shift does not apply"),
        (["--sampler", "euler"], "--sampler does not apply"),
        (["--frames", "6"], "num_frames must be 4k\\+1 for this tokenizer.*got 6, try 5 or 9"),
        (["--size", "32x32"], "height and width must be 16 and 16 for this model"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-p", "2"], "--top-p must be a probability mass"),
        (["--top-k", "-1"], "--top-k must be"),
        (["--image", "first.png"], "--image needs a model that does image-to-video.*token-ar model"),
        (["--quantize", "int8"], "invalid choice"),
    ],
)
def test_token_ar_bad_options_fail_before_loading(ar_model_dir, tmp_path, capsys, monkeypatch, case, message):
    import re

    from kinema.pipelines import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("weights were loaded"))
    assert main(["generate", AR_PROMPT, "--model", str(ar_model_dir), "-o", str(tmp_path / "x.mp4"), *case]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "x.mp4").exists()


def test_info_on_a_token_ar_model_and_preset(ar_model_dir, capsys):
    from kinema.models.token_ar import TokenAR
    from tests.pipelines.test_token_ar_pipeline import TINY_AR

    assert main(["info", str(ar_model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "kinema" and info["pipeline"] == "token-ar" and info["architecture"] == "TokenAR"
    assert info["parameters"] == TokenAR(TINY_AR).num_parameters()
    assert info["config"]["grid"] == [4, 4] and info["config"]["vocab_size"] == 32
    assert set(info["components"]) == {"transformer", "tokenizer"}
    assert main(["info", "ar-8b"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 8_020_029_440
    assert main(["generate", "x", "--model", "ar-8b"]) == 2
    assert "preset without weights" in capsys.readouterr().err


def test_eval_generates_with_a_token_ar_model(ar_model_dir, tmp_path, capsys):
    out_dir = tmp_path / "gen"
    args = ["eval", "--model", str(ar_model_dir), "--out", str(out_dir), "--size", "16", "--frames", "5", "--limit", "2"]
    assert main([*args, "--temperature", "0.9"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["all"]["n"] == 2 and len(list(out_dir.glob("*.mp4"))) == 2
    assert main([*args, "--steps", "4"]) == 2  # a token model takes no steps: refused, not ignored
    assert "--steps does not apply" in capsys.readouterr().err


def test_eval_refuses_token_options_for_a_diffusion_model(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--out", str(tmp_path / "g"), "--temperature", "1"]) == 2
    assert "--temperature does not apply" in capsys.readouterr().err


def _token_ar_run(ar_model_dir, root):
    """A token-ar run's model/ folder as kinema train exports it (training.json names the tokenizer)."""
    run = root / "ar-run" / "model"
    shutil.copytree(ar_model_dir / "transformer", run)
    training = {
        "model": "token-ar", "tokenizer": str(ar_model_dir / "tokenizer"), "text_encoder": "minilm", "text_max_length": 16,
        "data": {"kind": "synthetic", "size": 16, "frames": 5},
    }  # fmt: skip
    (run / "training.json").write_text(json.dumps(training))
    return run


def test_package_a_token_ar_run(ar_model_dir, tmp_path, capsys):
    from kinema.pipelines.package import KINEMA_MODEL_FILE

    run = _token_ar_run(ar_model_dir, tmp_path)
    out = tmp_path / "packaged"
    assert main(["package", str(run), "--out", str(out), "--temperature", "0.8", "--top-k", "5", "--guidance", "2"]) == 0
    card = json.loads((out / KINEMA_MODEL_FILE).read_text())
    assert card["pipeline"] == "token-ar" and card["text_encoder"] == {"kind": "minilm", "max_length": 16}
    assert card["sampler"] == {"temperature": 0.8, "top_k": 5, "top_p": 1.0, "typical_p": 1.0}
    # 5-frame items are 2 token frames, which the model's 2-frame window holds whole: it never saw
    # the window slide, so its long videos are windows of its clip
    assert json.loads((ar_model_dir / "transformer" / "config.json").read_text())["window_frames"] == 2
    assert card["defaults"] == {"guidance_scale": 2.0, "height": 16, "width": 16, "num_frames": 5, "slide": False}
    assert not kinema.load_pipeline(out).rules.slides
    # --tokenizer overrides the one training.json names
    other = tmp_path / "other-tokenizer"
    shutil.copytree(ar_model_dir / "tokenizer", other)
    (run / "training.json").write_text(json.dumps({**json.loads((run / "training.json").read_text()), "tokenizer": str(tmp_path / "gone")}))
    assert main(["package", str(run), "--out", str(tmp_path / "p2"), "--tokenizer", str(other)]) == 0
    assert json.loads((tmp_path / "p2" / KINEMA_MODEL_FILE).read_text())["sampler"]["temperature"] == 1.0
    # a run on items longer than a clip (data.clip_frames): the default is a clip of its world, not an item
    (run / "training.json").write_text(json.dumps({**json.loads((run / "training.json").read_text()), "data": {"kind": "shapes", "size": 16, "frames": 9, "clip_frames": 5}}))
    assert main(["package", str(run), "--out", str(tmp_path / "p3"), "--tokenizer", str(other)]) == 0
    assert json.loads((tmp_path / "p3" / KINEMA_MODEL_FILE).read_text())["defaults"]["num_frames"] == 5
    assert "slide" not in json.loads((tmp_path / "p3" / KINEMA_MODEL_FILE).read_text())["defaults"]  # 9-frame items: 3 token frames, the window slid
    assert kinema.load_pipeline(tmp_path / "p3").rules.slides
    capsys.readouterr()
    # refused: the tokenizer is gone, wan-only options, a VAE
    assert main(["package", str(run), "--out", str(tmp_path / "a")]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "b"), "--tokenizer", str(other), "--steps", "4"]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "c"), "--tokenizer", str(other), "--shift", "2"]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "d"), "--vae", str(other)]) == 2
    assert main(["package", str(run), "--out", str(tmp_path / "e"), "--tokenizer", str(other), "--temperature", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("error: ") for line in err), err
    assert "--tokenizer" in err[0] and "num_inference_steps does not apply" in err[1] and "shift does not apply" in err[2]
    assert "--vae does not apply" in err[3] and "temperature must be" in err[4]
    refused = {"a", "b", "c", "d", "e"}
    assert not [p.name for p in tmp_path.iterdir() if p.name in refused or p.name.lstrip(".").split(".")[0] in refused]  # nor temporaries


def test_shipped_shapes_ar_missing_then_present(ar_model_dir, tmp_path, monkeypatch, capsys):
    from kinema.checkpoints import layouts as loading

    assert "shapes-ar" in loading.SHIPPED_MODELS
    if not (loading.ASSETS_DIR / loading.SHIPPED_MODELS["shapes-ar"]).exists():  # this install, as it is
        assert main(["generate", AR_PROMPT, "--model", "shapes-ar", "-o", str(tmp_path / "real.mp4")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: the shipped model 'shapes-ar' is not in this install") and err.endswith("pass --model PATH")
    monkeypatch.setattr(loading, "ASSETS_DIR", tmp_path / "assets")
    for cmd in (["generate", AR_PROMPT, "--model", "shapes-ar", "-o", str(tmp_path / "x.mp4")], ["eval", "--model", "shapes-ar"], ["info", "shapes-ar"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the shipped model 'shapes-ar' is not in this install" in err and "--model PATH" in err, err
    shutil.copytree(ar_model_dir, tmp_path / "assets" / loading.SHIPPED_MODELS["shapes-ar"])
    assert main(["generate", AR_PROMPT, "--model", "shapes-ar", "-o", str(tmp_path / "a.mp4"), "-q"]) == 0
    assert read_video(tmp_path / "a.mp4")[0].shape == (5, 16, 16, 3)
