"""`kinema generate` with bad values: every one refused in one line, exit 2, before any weights
load, with nothing written. The shipped models (shapes: Wan, 64x64, 4k+1 frames, stride 16;
shapes-ar: token-ar, 64x64 only) serve as the targets: they ship inside the package."""

from __future__ import annotations

import pytest
import torch

from .conftest import assert_cli_refuses

BIG = str(10**30)

# (flags after `generate`, pattern of the one line); the prompt, output and -q are added unless given
DIFFUSION_CASES = [
    # prompts
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "   "], "prompt is empty"),
    (["--prompt", "\t\n "], "prompt is empty"),
    (["--prompt", "a red \udcff circle"], "not valid UTF-8"),
    (["--prompt", "x" * 100_001], "characters; at most"),
    (["--negative-prompt", "blurry \udcfe"], "--negative-prompt .*not valid UTF-8"),
    (["--prompt", "a red circle", "POSITIONAL"], "give the prompt once"),
    (["--prompt", None], "no prompt"),
    # sizes
    (["--size", "33x32"], "width must be a positive multiple of 16.*try 32 or 48"),
    (["--size", "64x50"], "height must be a positive multiple of 16"),
    (["--size", "0x64"], "width must be a positive"),
    (["--size=-64x64"], "width must be a positive"),
    (["--size", "64x"], "WIDTHxHEIGHT"),
    (["--size", "x64"], "WIDTHxHEIGHT"),
    (["--size", "64x64x64"], "WIDTHxHEIGHT"),
    (["--size", "big"], "WIDTHxHEIGHT"),
    (["--size", "64.5x64"], "WIDTHxHEIGHT"),
    (["--size", "100000x100000"], "at most 16,384|positions|memory"),
    (["--size", f"{BIG}x64"], "at most|positions|memory"),
    # frames
    (["--frames", "0"], "--frames must be a positive"),
    (["--frames", "-5"], "--frames must be a positive"),
    (["--frames", "30"], "4k\\+1.*try 29 or 33"),
    (["--frames", "100001"], "--frames must be at most 10,000"),
    (["--frames", BIG], "--frames must be at most"),
    (["--frames", "abc"], "invalid int value"),
    (["--frames", "1.5"], "invalid int value"),
    # steps
    (["--steps", "0"], "--steps must be a positive"),
    (["--steps", "-3"], "--steps must be a positive"),
    (["--steps", str(10**13)], "--steps must be at most 10,000"),
    (["--steps", "2.5"], "invalid int value"),
    # guidance
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance=-inf"], "--guidance must be a finite number"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "-1"], "--guidance must be a finite number in \\[0, 1000\\]"),
    (["--guidance", "1e9"], "--guidance must be a finite number in \\[0, 1000\\]"),
    (["--guidance", "strong"], "invalid float value"),
    # shift and sampler
    (["--shift", "0"], "--shift must be a finite number"),
    (["--shift", "-2"], "--shift must be a finite number"),
    (["--shift", "nan"], "--shift must be a finite number"),
    (["--shift", "inf"], "--shift must be a finite number"),
    (["--sampler", "ddim"], "--sampler must be one of euler, unipc for a wan-t2v model"),
    (["--sampler", "heun"], "invalid choice"),
    # seeds
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2\\*\\*64 - 1"),
    (["--seed", str(2**64)], "--seed must be a whole number from 0 to 2\\*\\*64 - 1"),
    (["--seed", str(2**70)], "--seed must be a whole number"),
    (["--seed", "0x10"], "invalid int value"),
    # threads, device, dtype, quantisation
    (["--threads", "0"], "--threads must be a whole number from 1"),
    (["--threads", "-2"], "--threads must be a whole number from 1"),
    (["--threads", "100000"], "--threads must be a whole number from 1 to"),
    (["--device", "mps"], "mps"),
    (["--device", "meta"], "not one kinema runs on"),
    (["--device", "gpu"], "device"),
    (["--device", "cuda:-1"], "device"),
    (["--device", ""], "--device must be a non-empty string"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "CUDA|cuda"),
    (["--dtype", "int7"], "unknown dtype"),
    (["--dtype", "float8"], "dtype"),
    (["--quantize", "fp8"], "fp8 quantisation is available for token-ar models"),
    (["--quantize", "int4"], "invalid choice"),
    # memory budget and offload
    (["--max-memory", "twelve"], "--max-memory must be a size such as 12GiB"),
    (["--max-memory", "12 parsecs"], "--max-memory must be a size"),
    (["--max-memory", "0"], "--max-memory must be a positive size"),
    (["--max-memory=-3GiB"], "--max-memory must be a size"),
    (["--max-memory", "nan"], "--max-memory must be a size"),
    (["--max-memory", ""], "--max-memory must be a size"),
    (["--max-memory", "1MiB"], "activations alone need about .* the budget is 1 MiB"),
    (["--max-memory", "1KiB", "--offload", "block"], "the budget is 1 KiB"),
    (["--offload", "disk"], "invalid choice"),
    # options of other families and other tasks
    (["--temperature", "0.5"], "--temperature does not apply"),
    (["--top-k", "3"], "--top-k does not apply"),
    (["--top-p", "0.9"], "--top-p does not apply"),
    (["--typical-p", "0.9"], "--typical-p does not apply"),
    (["--image", "first.png"], "--image needs a model that does image-to-video"),
    (["--input", "in.mp4"], "--input needs a model that does video-to-video"),
    (["--strength", "0.5"], "--strength applies to video-to-video"),
    (["--stepz", "3"], "unrecognized arguments"),
    # models
    (["--model", "/no/such/dir"], "neither a model directory nor a shipped model"),
    (["--model", "not-a-preset"], "neither a model directory nor a shipped model"),
    (["--model", "wan2.1-t2v-1.3b"], "preset without weights"),
    (["--model", "/dev/null"], "is a file"),
    (["--model", ""], "--model must be a non-empty string"),
]


@pytest.mark.parametrize("flags, pattern", DIFFUSION_CASES, ids=lambda v: repr(v)[:60] if isinstance(v, list) else None)
def test_generate_refuses(flags, pattern, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["generate", "-q", "-o", str(out / "clip.mp4")]
    if flags[:2] == ["--prompt", None]:
        flags = []
    elif "--prompt" not in flags:
        args.append("a red circle moving left")
    args += ["POSITIONAL_PROMPT" if f == "POSITIONAL" else f for f in flags]
    assert_cli_refuses(args, capsys, tmp_path, pattern)


TOKEN_CASES = [
    (["--frames", "100001"], "--frames must be at most 10,000"),
    (["--frames", "18"], "4k\\+1"),
    (["--size", "32x32"], "height and width must be 64 and 64"),
    (["--size", "128x64"], "height and width must be 64 and 64"),
    (["--steps", "4"], "--steps does not apply to .*token-ar"),
    (["--shift", "3"], "--shift does not apply"),
    (["--sampler", "euler"], "--sampler does not apply"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--top-k", "-1"], "--top-k"),
    (["--top-k", "1.5"], "invalid int value"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "nan"], "--top-p"),
    (["--typical-p", "0"], "--typical-p"),
    (["--typical-p", "2"], "--typical-p"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--quantize", "int4"], "invalid choice"),
]


@pytest.mark.parametrize("flags, pattern", TOKEN_CASES, ids=lambda v: repr(v)[:60] if isinstance(v, list) else None)
def test_token_model_generate_refuses(flags, pattern, tmp_path, capsys):
    args = ["generate", "a red circle moving left", "--model", "shapes-ar", "-q", "-o", str(tmp_path / "out" / "clip.mp4"), *flags]
    assert_cli_refuses(args, capsys, tmp_path, pattern)


PIXEL_CASES = [
    (["--frames", "7"], r"num_frames must be 2k for this model's time patch \(2, 4, 6, \.\.\.\); got 7, try 6 or 8"),
    (["--frames", "0"], "--frames"),
    (["--frames", "100002"], "--frames must be at most"),
    (["--size", "62x64"], "width must be a positive multiple of 4"),
    (["--size", "64x0"], "height must be a positive integer"),
    (["--steps", "1001"], "--steps must be at most 1,000 for this model"),
    (["--steps", "0"], "--steps"),
    (["--shift", "3"], "--shift does not apply to a pixel-dit model"),
    (["--sampler", "unipc"], "--sampler must be one of ddpm, ddim for a pixel-dit model"),
    (["--sampler", "heun"], "invalid choice"),
    (["--temperature", "0.5"], "--temperature does not apply to a pixel-dit model"),
    (["--top-p", "0.9"], "--top-p does not apply"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--quantize", "fp8"], "fp8 quantisation is available for token-ar"),
    (["--image", "missing.png"], "image"),
    (["--max-area", "64x64"], "--max-area sizes a clip from its picture"),
]


@pytest.mark.parametrize("flags, pattern", PIXEL_CASES, ids=lambda v: repr(v)[:60] if isinstance(v, list) else None)
def test_pixel_model_generate_refuses(flags, pattern, tiny_pixel_dir, tmp_path, capsys):
    args = ["generate", "a red circle moving left", "--model", str(tiny_pixel_dir), "-q", "-o", str(tmp_path / "out" / "clip.mp4"), *flags]
    assert_cli_refuses(args, capsys, tmp_path, pattern)


I2V_CASES = [
    ([], r"a wan-i2v model makes a clip from a picture: give --image \(the first frame\)"),
    (["--image", "{missing}"], "image file not found"),
    (["--image", "{text}"], "could not read image"),
    (["--image", "{empty}"], "could not read image"),
    (["--image", "{picture}", "--input", "{picture}"], "give --image \\(image-to-video\\) or --input"),
    (["--image", "{picture}", "--size", "40x32"], "width must be a positive multiple of 16"),
    (["--image", "{picture}", "--frames", "8"], r"num_frames must be 4k\+1"),
    (["--image", "{picture}", "--strength", "0.5"], "--strength applies to video-to-video"),
    (["--image", "{picture}", "--temperature", "0.5"], "--temperature does not apply to a wan-i2v model"),
    (["--image", "{picture}", "--size", "auto"], r"at most 512 for this model \(its positions\); got 624x624"),
    (["--image", "{picture}", "--max-area", "1280x720"], r"at most 512 for this model \(its positions\); got 960x960"),
    (["--image", "{picture}", "--max-area", "32x32", "--size", "32x32"], r"give --max-area \(the size from the picture\) or height and width"),
    (["--image", "{picture}", "--max-area", "10000x10000"], r"--max-area must be at most 33,177,600 pixels"),
    (["--image", "{picture}", "--max-area", "0x16"], r"--max-area must be a positive integer"),
]


@pytest.mark.parametrize("flags, pattern", I2V_CASES, ids=lambda v: repr(v)[:60] if isinstance(v, list) else None)
def test_image_to_video_generate_refuses(flags, pattern, tiny_wan_i2v_dir, tmp_path, capsys, no_loading):
    import numpy as np
    from PIL import Image

    files = {"missing": tmp_path / "nowhere.png", "text": tmp_path / "notes.png", "empty": tmp_path / "empty.png", "picture": tmp_path / "p.png"}
    files["text"].write_text("not a picture")
    files["empty"].write_bytes(b"")
    Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8)).save(files["picture"])
    flags = [f.format(**files) for f in flags]
    args = ["generate", "a red circle moving left", "--model", str(tiny_wan_i2v_dir), "-q", "-o", str(tmp_path / "out" / "clip.mp4"), *flags]
    assert_cli_refuses(args, capsys, tmp_path / "out", pattern)
