"""`kinema extend`, `generate --prompt-extend`, `kinema replay` and `kinema info VIDEO` with bad
inputs: one line, exit 2, nothing written, before any weights load."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.video import write_video

from .conftest import assert_cli_refuses

TOKEN_MODEL = "shapes-ar"


@pytest.fixture
def inputs(tmp_path):
    """A 9-frame 64x64 clip with no kinema tag, a text file named like a video, an empty folder, a file."""
    write_video(np.zeros((9, 64, 64, 3), np.uint8), tmp_path / "in.mp4", fps=16)
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty").mkdir()
    (tmp_path / "f.txt").write_text("x")
    write_video(np.zeros((9, 72, 72, 3), np.uint8), tmp_path / "odd.mp4", fps=16)  # sides no model here makes
    return tmp_path


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["{tmp}/nope.mp4", "x"], "not found"),
        (["{tmp}/text.mp4", "x"], "could not read video \\S*text\\.mp4: invalid data found"),  # FFmpeg's reason, without PyAV's errno
        (["{tmp}/empty", "x"], "empty is a directory, not a video file"),
        (["{tmp}/in.mp4"], "no prompt"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--frames", "5"], "--frames \\(new frames\\) must be a multiple of 4"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--frames", "0"], "--frames must be a positive integer"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--overlap", "4"], "--overlap must be 4k\\+1"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--overlap", "0"], "--overlap must be a positive integer"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--overlap", "13"], "--overlap is 13 frames but the video has 9"),
        (["{tmp}/in.mp4", "x", "--model", TOKEN_MODEL, "--steps", "4"], "--steps does not apply to a token-ar model"),
        (["{tmp}/in.mp4", "x", "--overlap", "21"], "--overlap is 21 frames but the video has 9"),
        (["{tmp}/in.mp4", "x", "--frames", "6"], "multiple of 4"),
        (["{tmp}/in.mp4", "x", "-o", "{tmp}/in.mp4"], "is the input video"),
        (["{tmp}/in.mp4", "x", "--seed", "-1"], "--seed must be a whole number"),
        (["{tmp}/odd.mp4", "x"], "the video is 72x72; this model makes frames whose sides are multiples of 16: resize it first \\(to 64x64 or 80x80\\)"),
        (["{tmp}/odd.mp4", "x", "--model", TOKEN_MODEL], "the video is 72x72; this model makes 64x64 frames: resize it first"),
    ],
)
def test_extend_refuses(args, pattern, inputs, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    assert_cli_refuses(["extend", *[a.format(tmp=inputs) for a in args]], capsys, inputs, pattern)


@pytest.mark.parametrize("target, pattern", [("{tmp}/nope", "not found|does not exist"), ("{tmp}/empty", "config.json"), ("{tmp}/f.txt", "not a folder|is a file|directory")])
def test_generate_refuses_a_bad_prompt_extend_folder(target, pattern, inputs, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    args = ["generate", "a red circle", "--prompt-extend", target.format(tmp=inputs), "-o", str(inputs / "o.mp4"), "--frames", "5", "--steps", "2"]
    assert_cli_refuses(args, capsys, inputs, pattern)


@pytest.mark.parametrize(
    "command, args, pattern",
    [
        ("replay", ["{tmp}/nope.mp4"], "not found|no such"),
        ("replay", ["{tmp}/text.mp4"], "text\\.mp4 is not a video file kinema can read: invalid data found"),
        ("replay", ["{tmp}/in.mp4"], "kinema metadata|no kinema|not made by kinema|carries no"),
        ("info", ["{tmp}/text.mp4"], "not a video|could not read"),
        ("info", ["{tmp}/in.mp4"], "kinema metadata|no kinema|not made by kinema|carries no"),
    ],
)
def test_replay_and_info_refuse(command, args, pattern, inputs, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    assert_cli_refuses([command, *[a.format(tmp=inputs) for a in args]], capsys, inputs, pattern)


def _forbid_loading(monkeypatch) -> None:
    """Every case here is refused before a weight is read."""
    from kinema.pipelines import loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was refused")

    monkeypatch.setattr(loading, "load_pipeline", refuse)
