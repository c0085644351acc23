"""Inputs at the edges that must work, not be refused: long, emoji and multi-line prompts, nested
and unusual output paths, overwriting a video, the default negative prompt on a tokenizer without
an end token, numbers at their bounds."""

from __future__ import annotations

import pytest

from kinema.cli import main
from kinema.video import read_video

from .conftest import files_under

SMALL = ["--frames", "5", "--steps", "2", "-q"]


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle moving left " * 400,  # 10,000 characters: the encoder keeps its first tokens
        "a 🔴 circle moving ⬅️ left 🎬",
        "a red circle\nmoving left",
        "ein roter Kreis, der sich nach links bewegt — ça bouge",
        "x",
    ],
    ids=["10k-chars", "emoji", "newline", "non-ascii", "one-char"],
)
def test_unusual_prompts_work(prompt, tmp_path):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", prompt, "-o", str(out), *SMALL]) == 0
    assert read_video(out)[0].shape[0] == 5


@pytest.mark.parametrize("name", ["a/b/c/clip.mp4", "with space/ünïcödé clip.mp4", "clip.MP4", "clip.mkv"])
def test_unusual_output_paths_work(name, tmp_path):
    out = tmp_path / name
    assert main(["generate", "a red circle", "-o", str(out), *SMALL]) == 0
    assert read_video(out)[0].shape[0] == 5
    assert not [f for f in files_under(tmp_path) if ".part" in f or f.startswith(".")]


def test_overwriting_a_video_replaces_it_whole(tmp_path):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a red circle moving left", "-o", str(out), *SMALL]) == 0
    first = read_video(out)[0]
    assert main(["generate", "a blue square moving up", "-o", str(out), *SMALL]) == 0
    assert not (read_video(out)[0] == first).all()
    assert files_under(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--seed", str(2**64 - 1)],
        ["--guidance", "0"],
        ["--guidance", "1"],
        ["--frames", "1"],
        ["--shift", "1000"],
        ["--size", "16x16"],
        ["--model", "shapes-ar", "--top-k", str(10**30), "--frames", "1"],
        ["--model", "shapes-ar", "--temperature", "0", "--frames", "1"],
    ],
    ids=lambda f: " ".join(f)[:40],
)
def test_values_at_their_bounds_work(flags, tmp_path):
    out = tmp_path / "clip.mp4"
    args = ["generate", "a red circle", "-o", str(out), "--steps", "2", "-q", *flags]
    if "--frames" not in flags:
        args += ["--frames", "5"]
    if "shapes-ar" in flags:
        args.remove("--steps"), args.remove("2")
    assert main(args) == 0
    assert out.exists()
