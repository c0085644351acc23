"""Prompt extension through the whole path, with a tiny random causal LM built by transformers: the
command line, generate's batches, the metadata keeping both prompts, a replay that needs no
language model, the server's prompt_extend and its refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from kinema.cli import main
from kinema.generation import generate
from kinema.replay import read_metadata
from kinema.request import GenerationRequest
from kinema.video import read_video

from .helpers import save_lm

TINY = ["--frames", "5", "--steps", "2"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return save_lm(tmp_path_factory.mktemp("lm"), chat=True)


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_command_line_extends_and_records_both_prompts(tmp_path, capsys):
    lm = save_lm(tmp_path / "lm", chat=True)  # its own: deleted before the replay
    out = tmp_path / "a.mp4"
    assert main(["generate", "a red circle moving left", "--prompt-extend", str(lm), "--seed", "4", "-o", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert f"prompt extended by {lm.name}:" in err
    meta = read_metadata(out)
    record = meta["extra"]["prompt_extend"]
    assert record["original"] == "a red circle moving left" and record["model"] == lm.name and len(record["sha256"]) == 64
    extended = meta["request"]["prompt"]
    assert isinstance(extended, str) and extended.strip() and extended != "a red circle moving left"
    assert "prompt_extend" not in meta["request"]  # the recorded request is the one run: a replay extends nothing
    # deterministic with the seed: the same command, the same extension and the same bytes
    again = tmp_path / "b.mp4"
    assert main(["generate", "a red circle moving left", "--prompt-extend", str(lm), "--seed", "4", "-o", str(again), *TINY]) == 0
    assert again.read_bytes() == out.read_bytes()
    # another seed, another extension
    other = tmp_path / "c.mp4"
    assert main(["generate", "a red circle moving left", "--prompt-extend", str(lm), "--seed", "5", "-o", str(other), *TINY]) == 0
    assert read_metadata(other)["request"]["prompt"] != extended
    # the replay needs no language model: the extended prompt is in the file
    shutil.rmtree(lm)
    replayed = tmp_path / "r.mp4"
    assert main(["replay", str(out), "-o", str(replayed), "-q"]) == 0
    assert replayed.read_bytes() == out.read_bytes()


def test_batch_prompts_each_extended(lm):
    request = GenerationRequest(prompt=["a red circle moving left", "a blue square moving up"], prompt_extend=str(lm), num_frames=5, num_inference_steps=2, seed=1)
    done = generate(request, write=False, progress_bar=False)
    assert isinstance(done.request.prompt, list) and len(done.request.prompt) == 2
    assert done.request.prompt[0] != done.request.prompt[1]
    assert done.metadata[0]["extra"]["prompt_extend"]["original"] == ["a red circle moving left", "a blue square moving up"]
    stages = []
    generate(request, write=False, progress_bar=False, callback=lambda p: stages.append(p.stage))
    assert stages[0] == "prompt" and "prompt" in stages and "denoise" in stages


def test_server_prompt_extend(lm, tmp_path):
    from .server.harness import Server

    with Server(tmp_path / "queue", "--prompt-extend", str(lm)) as server:
        status, job = server.call("POST", "/v1/videos", {"prompt": "a green triangle moving right", "prompt_extend": True, "seed": 2, "num_frames": 5, "num_inference_steps": 2})
        assert status == 200, job
        assert job["request"]["prompt_extend"] is True and str(lm) not in str(job)  # the server's folder stays its own
        done = server.wait(job["id"])
        assert done["status"] == "completed", done
        status, data = server.call("GET", f"/v1/videos/{job['id']}/content")
    (tmp_path / "v.mp4").write_bytes(data)
    meta = read_metadata(tmp_path / "v.mp4")
    assert meta["extra"]["prompt_extend"]["original"] == "a green triangle moving right"
    assert meta["extra"]["job"] == job["id"]
    assert meta["request"]["prompt"] != "a green triangle moving right"
    # the server's extension is the command line's: the same text for the same seed
    out = tmp_path / "cli.mp4"
    assert main(["generate", "a green triangle moving right", "--prompt-extend", str(lm), "--seed", "2", "-o", str(out), "-q", *TINY]) == 0
    assert read_metadata(out)["request"]["prompt"] == meta["request"]["prompt"]
    assert np.array_equal(read_video(out)[0], read_video(tmp_path / "v.mp4")[0])


def test_page_enhance_then_generate_sends_the_original(lm, tmp_path):
    """The page's handlers without a browser: Enhance rewrites the box; Generate queues the original
    with prompt_extend, so the worker records both."""
    from kinema.server.api import ServerState
    from kinema.server.app import served_models
    from kinema.server.queue import JobQueue
    from kinema.server.ui import Extender, submit_form

    state = ServerState(JobQueue(tmp_path / "q"), served_models(["shapes"]), prompt_extend=str(lm))
    extended = Extender(state.prompt_extend).extend("a red circle moving left", 3)
    job_id = submit_form(state, {"model": "shapes", "prompt": "a red circle moving left", "prompt_extend": True, "seed": 3, "num_frames": 5})
    job = state.queue.get(job_id)
    assert job.request["prompt"] == "a red circle moving left" and job.request["prompt_extend"] == str(lm)
    assert extended.strip() and extended != job.request["prompt"]
