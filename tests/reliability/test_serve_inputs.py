"""`kinema serve` with bad flags: one line, exit 2, before it listens, and no queue folder made."""

from __future__ import annotations

import socket

import pytest

from .conftest import assert_cli_refuses


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--port", "-1"], "--port must be a port"),
        (["--port", "70000"], "--port must be a port"),
        (["--max-tries", "0"], "--max-tries must be at least 1"),
        (["--max-queued", "0"], "--max-queued must be at least 1"),
        (["--stop-after", "0"], "--stop-after must be a positive"),
        (["--stop-after", "nan"], "--stop-after must be a positive"),
        (["--cache-memory", "lots"], "--cache-memory must be a size"),
        (["--max-upload=-5MiB"], "--max-upload must be"),
        (["--max-upload", "0"], "--max-upload must be a positive"),
        (["--host", "0.0.0.0"], "--api-key"),
        (["--host", "192.168.1.20"], "--api-key"),
        (["--model", "{tmp}/no-such-model"], "neither a model directory nor a shipped model"),
        (["--model", "shapes", "--model", "{tmp}/empty"], "model"),
        (["--prompt-extend", "{tmp}/no-lm"], "not found|does not exist|no-lm"),
        (["--prompt-extend", "{tmp}/empty"], "config.json"),
        (["--queue", "{tmp}/a-file"], "is a file"),
    ],
)
def test_serve_refuses(args, pattern, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KINEMA_API_KEY", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    queue = ["--queue", str(tmp_path / "queue")] if "--queue" not in args else []
    assert_cli_refuses(["serve", "--port", "0", "--no-ui", *queue, *args], capsys, tmp_path, pattern)


def test_serve_refuses_a_port_in_use(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_cli_refuses(["serve", "--port", str(port), "--no-ui", "--queue", str(tmp_path / "queue")], capsys, tmp_path, "cannot listen on 127.0.0.1")


@pytest.mark.parametrize(
    "values, pattern",
    [
        ({"task": "continue a video", "overlap": "some"}, "overlap must be a whole number"),
        ({"task": "continue a video", "num_frames": 8, "overlap": "13"}, "overlap is 13 frames but the video has 9"),
        ({"task": "continue a video", "num_frames": 8, "video": "odd"}, "the video is 72x72; .*resize it first"),
        ({"task": "continue a video", "video": None}, "continuing a video needs one: upload one"),
        ({"schedule": True, "prompt": "a\nb", "prompt_frames": "33, many"}, "frames per prompt must be whole numbers"),
        ({"schedule": True, "prompt": "a\nb", "prompt_frames": "33"}, "gives 1 count\\(s\\) for 2 prompt line\\(s\\)"),
        ({"schedule": True, "prompt": " \n "}, "one a line: none given"),
        ({"schedule": True, "prompt": "a\nb", "prompt_frames": "33, 30"}, "a multiple of 4"),
    ],
)
def test_the_page_refuses(values, pattern, tmp_path):
    """The page's continue-a-video and one-prompt-a-line fields: one line on the page, no job queued,
    no upload left in the queue's folder."""
    import numpy as np

    import re

    from kinema.server.api import ApiError, ServerState
    from kinema.server.app import served_models
    from kinema.server.queue import JobQueue
    from kinema.server.ui import submit_form
    from kinema.video import write_video

    from .conftest import files_under

    write_video(np.zeros((9, 64, 64, 3), np.uint8), tmp_path / "in.mp4", fps=16)
    write_video(np.zeros((9, 72, 72, 3), np.uint8), tmp_path / "odd.mp4", fps=16)
    state = ServerState(JobQueue(tmp_path / "queue"), served_models(None))
    form = {"model": "shapes", "task": "text-to-video", "prompt": "a red circle", "num_frames": 33, "width": 64, "height": 64,
            "num_inference_steps": 2, "seed": 0, "video": str(tmp_path / "in.mp4"), **values}  # fmt: skip
    if form.get("video") == "odd":
        form["video"] = str(tmp_path / "odd.mp4")
    before = files_under(tmp_path / "queue")
    with pytest.raises(ApiError) as info:
        submit_form(state, form)
    message = info.value.message
    assert "\n" not in message.strip() and re.search(pattern, message), message
    assert files_under(tmp_path / "queue") == before and state.queue.list(limit=10) == []  # no job, no upload left behind
