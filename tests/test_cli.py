"""The command line: generate writes a playable mp4; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

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
        (["--input", "in.mp4", "--strength", "2"], "--strength must be in \\(0, 1\\]"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--dtype", "int8"], "CUDA|unknown dtype"),
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


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval"]) == 2
    assert main(["eval", "--clips", str(tmp_path / "none")]) == 2
    assert main(["eval", "--model", str(tmp_path / "none")]) == 2
    assert main(["eval", "--reference", "--per-prompt", "0", "--out", str(tmp_path / "r")]) == 2
    assert all(line.startswith("error: ") for line in capsys.readouterr().err.strip().splitlines())


def test_output_piped_into_a_closed_reader_is_not_a_traceback():
    # `true` exits without reading, long before kinema has imported torch: its print hits a closed pipe
    res = subprocess.run(f"{sys.executable} -m kinema.cli info wan2.1-t2v-1.3b | true", shell=True, capture_output=True, text=True)
    assert "Traceback" not in res.stderr and "BrokenPipeError" not in res.stderr, res.stderr
