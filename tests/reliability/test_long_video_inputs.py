"""Long videos and prompt schedules with bad inputs: `kinema generate` and `kinema extend` with
several --prompt, --prompt-frames, --window and --overlap, and the request API's prompt_schedule;
one line, exit 2, nothing written, before any weights load."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.errors import KinemaError
from kinema.generation import generate
from kinema.request import GenerationRequest
from kinema.video import write_video

from .conftest import assert_cli_refuses
from .test_extend_replay_inputs import _forbid_loading

P = ["--prompt", "a red circle moving left", "--prompt", "a red circle moving right"]


@pytest.mark.parametrize(
    "args, pattern",
    [
        ([*P, "--prompt-frames", "33"], "--prompt-frames has 1 numbers for 2 --prompt"),
        ([*P, "--prompt-frames", "33,x"], "expected whole numbers separated by commas"),
        ([*P, "--prompt-frames", "33,,32"], "expected whole numbers separated by commas"),
        ([*P, "--prompt-frames", "30,32"], "item 0 has 30 frames; the first must be 4k\\+1"),
        ([*P, "--prompt-frames", "33,30"], "item 1 has 30 frames; after the first, a prompt's frames must be a multiple of 4"),
        ([*P, "--prompt-frames", "33,0"], "item 1: frames must be a whole number from 1"),
        ([*P, "--prompt-frames", "33,-4"], "item 1: frames must be a whole number from 1"),
        ([*P, "--frames", "66"], "cannot be shared among the 2 prompt"),
        ([*P, "--frames", "7"], "cannot be shared among the 2 prompt"),
        ([*P, "--prompt-frames", "33,32", "--frames", "64"], "--frames is 64 but the prompt schedule's frames add up to 65"),
        (["--prompt", "a", "--prompt", ""], "prompt_schedule\\[1\\] is empty"),
        (["a red circle", "--prompt", "b"], "give the prompt once"),
        (["a red circle", "--frames", "65", "--window", "30"], "--window must be 4k\\+1 frames"),
        (["a red circle", "--frames", "65", "--window", "1"], "--window must be 4k\\+1 frames"),
        (["a red circle", "--frames", "65", "--window", "0"], "--window must be a positive integer"),
        (["a red circle", "--frames", "65", "--window", "99999"], "--window must be at most"),
        (["a red circle", "--frames", "65", "--overlap", "33"], "--overlap \\(33\\) must leave room in each --window"),
        (["a red circle", "--frames", "65", "--overlap", "4"], "--overlap must be 4k\\+1"),
        (["a red circle", "--frames", "65", "--overlap", "21"], "--overlap must be at most 17"),
        (["a red circle", "--frames", "66"], "num_frames must be 4k\\+1 for this VAE .*got 66, try 65 or 69"),
        (["a red circle", "--overlap", "5"], "--overlap applies to continuing a video"),
        ([*P, "--image", "{tmp}/in.mp4"], "leave out --image"),
        ([*P, "--model", "shapes-ar", "--prompt-frames", "9,6"], "multiple of 4"),
        (["a red circle", "--model", "shapes-ar", "--frames", "33", "--overlap", "9"], "--overlap applies to continuing a video"),
    ],
)
def test_generate_refuses(args, pattern, inputs, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    assert_cli_refuses(["generate", *[a.format(tmp=inputs) for a in args], "-o", str(inputs / "o.mp4")], capsys, inputs, pattern)


@pytest.mark.parametrize(
    "args, pattern",
    [
        ([*P, "--prompt-frames", "8"], "--prompt-frames has 1 numbers for 2 --prompt"),
        ([*P, "--prompt-frames", "8,6"], "item 1 has 6 frames; after the first, a prompt's frames must be a multiple of 4"),
        ([*P, "--prompt-frames", "9,8"], "item 0 has 9 frames; after the first"),
        ([*P, "--frames", "10"], "cannot be shared among the 2 prompt"),
        (["x", "--frames", "64", "--window", "31"], "--window must be 4k\\+1 frames"),
        (["x", "--frames", "64", "--window", "9", "--overlap", "9"], "--overlap \\(9\\) must leave room in each --window \\(9 frames\\)"),
    ],
)
def test_extend_refuses(args, pattern, inputs, capsys, monkeypatch):
    _forbid_loading(monkeypatch)
    assert_cli_refuses(["extend", str(inputs / "in.mp4"), *args, "-o", str(inputs / "o.mp4")], capsys, inputs, pattern)


@pytest.mark.parametrize(
    "schedule, pattern",
    [
        ("a red circle", "prompt_schedule must be a list of \\[prompt, frames\\] pairs"),
        ([["a", 33, 1]], "item 0 is"),
        ([[1, 33]], "prompt_schedule\\[0\\] must be a string"),
        ([["a", 33.5]], "item 0: frames must be a whole number"),
        ([["a", True]], "item 0: frames must be a whole number"),
        ([["a", None]] * 1001, "at most 1,000"),
        ([["a", 9_997], ["b", 8]], "adds up to 10,005 frames; at most 10,000"),
        ([["a", None]] * 400, "adds up to 12,801 frames \\(a window for each prompt without frames\\)"),
    ],
)
def test_the_request_api_refuses(schedule, pattern, monkeypatch):
    _forbid_loading(monkeypatch)
    with pytest.raises(KinemaError, match=pattern) as info:
        generate(GenerationRequest(prompt_schedule=schedule), write=False, progress_bar=False)
    assert "\n" not in str(info.value)
    with pytest.raises(KinemaError, match="prompt_schedule"):
        GenerationRequest.from_json({"prompt_schedule": schedule if isinstance(schedule, str) else [["a", "b"]]})


@pytest.fixture
def inputs(tmp_path):
    write_video(np.zeros((9, 64, 64, 3), np.uint8), tmp_path / "in.mp4", fps=16)
    return tmp_path
