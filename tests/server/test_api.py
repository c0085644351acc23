"""The HTTP API against a real ``kinema serve`` on 127.0.0.1: the OpenAI video API's shape, the
one-line 4xx refusals, uploads only (never a server path), auth, limits, cancel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinema.video import read_video, write_video

from .harness import TINY, Server, decoded, multipart


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("api") / "queue") as s:
        yield s


def _one_line_error(status: int, body) -> str:
    assert 400 <= status < 500, (status, body)
    message = body["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_models_and_shape_of_a_job(server, tmp_path):
    status, models = server.call("GET", "/v1/models")
    assert status == 200 and models["object"] == "list"
    names = [m["id"] for m in models["data"]]
    assert "shapes" in names and all(m["object"] == "model" for m in models["data"])
    status, one = server.call("GET", "/v1/models/shapes")
    assert status == 200 and one["defaults"]["fps"] == 16

    status, job = server.call("POST", "/v1/videos", {"model": "shapes", "prompt": "a red circle moving left", "seed": 7, **TINY})
    assert status == 200, job
    assert job["object"] == "video" and job["status"] == "queued" and job["id"].startswith("video_")
    assert job["request"]["seed"] == 7 and job["prompt"] == "a red circle moving left"
    done = server.wait(job["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["size"] == "64x64" and done["settings"]["num_frames"] == 5
    assert done["url"] == f"/v1/videos/{job['id']}/content"
    status, data = server.call("GET", done["url"])
    assert status == 200 and isinstance(data, bytes) and data[4:8] == b"ftyp"
    (tmp_path / "got.mp4").write_bytes(data)
    frames, fps = read_video(tmp_path / "got.mp4")
    assert frames.shape == (5, 64, 64, 3) and fps == 16

    status, listed = server.call("GET", "/v1/videos?limit=5")
    assert status == 200 and listed["object"] == "list" and job["id"] in [v["id"] for v in listed["data"]]

    # OpenAI's size and seconds fit: 64x64, and 0.3 s at 16 fps is the nearest 4k+1 count, 5
    status, job2 = server.call("POST", "/v1/videos", {"prompt": "a blue square moving up", "size": "64x64", "seconds": "0.3", "num_inference_steps": 2})
    assert status == 200, job2
    done2 = server.wait(job2["id"])
    assert done2["status"] == "completed" and done2["settings"]["num_frames"] == 5 and done2["settings"]["width"] == 64


def test_the_same_request_gives_the_same_bytes(server):
    body = {"prompt": "a green triangle moving right", "seed": 3, **TINY}
    ids = [server.call("POST", "/v1/videos", body)[1]["id"] for _ in range(2)]
    files = []
    for job_id in ids:
        assert server.wait(job_id)["status"] == "completed"
        files.append(server.call("GET", f"/v1/videos/{job_id}/content")[1])
    assert files[0] != files[1]  # each carries its own job id
    assert decoded(files[0]) == decoded(files[1])


@pytest.mark.parametrize(
    "body, words",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "x", "num_frames": 6}, "4k+1"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale"),
        ({"prompt": "x", "model": "../../etc"}, "model must be one of"),
        ({"prompt": "x", "image": "/etc/passwd"}, "uploaded as a file"),
        ({"prompt": "x", "video": "/tmp/a.mp4"}, "uploaded as a file"),
        ({"prompt": "x", "extend": "/etc/passwd"}, "uploaded as a file"),
        ({"prompt": "x", "output": "/tmp/evil.mp4"}, "chosen by the server"),
        ({"prompt": "x", "device": "cuda:7"}, "chosen by the server"),
        ({"prompt": "x", "size": "big"}, "WIDTHxHEIGHT"),
        ({"prompt": "x", "size": "64x64", "width": 64}, "not both"),
        ({"prompt": "x", "seconds": -2}, "seconds"),
        ({"prompt": "x", "no_such_field": 1}, "no_such_field"),
        ({"prompt": "x", "model": "shapes", "top_k": 5}, "does not apply"),
        ({"prompt": "x", "prompt_extend": True}, "no prompt extension model"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": ["a red circle", "a blue square"]}, "a job makes one video"),
        ({"prompt": "x", "num_videos_per_prompt": 3}, "a job makes one video"),
        ({"prompt": "x", "prompt_extend": "yes"}, "prompt_extend must be true or false"),
        ({"prompt": "x", "seed": "lucky"}, "seed"),
        ({"prompt_schedule": "a red circle"}, "prompt_schedule must be a list"),
        ({"prompt_schedule": [["a red circle", 30], ["a blue square", 32]]}, "the first must be 4k+1"),
        ({"prompt": "x", "num_frames": 65, "window": 30}, "window must be 4k+1"),
    ],
)
def test_bad_requests_are_one_line_4xx(server, body, words):
    status, answer = server.call("POST", "/v1/videos", body)
    assert status == 400
    assert words in _one_line_error(status, answer)


def test_bad_bodies_routes_and_ids(server):
    for raw, ctype, code in ((b"{not json", "application/json", 400), (b"[1, 2]", "application/json", 400), (b"prompt=x", "text/plain", 415)):
        status, answer = server.call("POST", "/v1/videos", raw=raw, content_type=ctype)
        assert status == code
        _one_line_error(status, answer)
    status, answer = server.call("POST", "/v1/videos", raw=b'{"prompt": "' + b"a" * (2 << 20) + b'"}')
    assert status == 413
    _one_line_error(status, answer)
    for method, path, code in (("GET", "/v1/videos/video_nope", 404), ("GET", "/v1/videos/video_nope/content", 404),
                               ("DELETE", "/v1/videos/video_nope", 404), ("GET", "/v1/videos?limit=0", 400),
                               ("GET", "/v1/videos?status=done", 400), ("GET", "/v1/videos?after=video_nope", 400),
                               ("GET", "/v1/models/nope", 404), ("PUT", "/v1/videos", 405)):  # fmt: skip
        status, answer = server.call(method, path)
        assert status == code, (method, path, answer)
        _one_line_error(status, answer)


def test_uploads_are_checked_and_never_kept_when_refused(server, tmp_path):
    # a picture to a text-to-video model: refused, and the upload does not stay on the server
    body, ctype = multipart({"prompt": "a red circle", "model": "shapes"}, {"input_reference": ("first.png", _png(), "image/png")})
    status, answer = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
    assert "image-to-video" in _one_line_error(status, answer)
    uploads = server_queue(server) / "uploads"
    assert not any(uploads.iterdir())
    # not a picture at all: one line naming the upload, not the server's folder
    body, ctype = multipart({"prompt": "a red circle"}, {"image": ("x.png", b"not a png", "image/png")})
    status, answer = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
    message = _one_line_error(status, answer)
    assert str(server_queue(server)) not in message
    # a file in a field that takes none, and a form's typed fields
    body, ctype = multipart({"prompt": "x"}, {"prompt_file": ("p.txt", b"hello", "text/plain")})
    assert server.call("POST", "/v1/videos", raw=body, content_type=ctype)[0] == 400
    body, ctype = multipart({"prompt": "x", "num_frames": "five"}, {})
    status, answer = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
    assert "whole number" in _one_line_error(status, answer)
    body, ctype = multipart({"prompt": "a red circle moving left", "num_frames": "5", "num_inference_steps": "2", "seed": "random"}, {})
    status, job = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
    assert status == 200 and isinstance(job["seed"], int) and job["request"]["num_frames"] == 5


def test_cancel_a_queued_job(server):
    # a long job first, so the next ones wait behind it
    status, long_job = server.call("POST", "/v1/videos", {"prompt": "a red circle moving left", "num_frames": 33, "num_inference_steps": 20})
    status, queued = server.call("POST", "/v1/videos", {"prompt": "a blue circle", **TINY})
    status, answer = server.call("DELETE", f"/v1/videos/{queued['id']}")
    assert status == 200 and answer["status"] == "cancelled"
    status, answer = server.call("DELETE", f"/v1/videos/{queued['id']}")
    assert status == 409 and "cancelled already" in _one_line_error(status, answer)
    status, answer = server.call("GET", f"/v1/videos/{queued['id']}/content")
    assert status == 409
    # the running one: cancelled at its next step
    server.wait(long_job["id"], until=("in_progress", "completed"))
    status, answer = server.call("DELETE", f"/v1/videos/{long_job['id']}")
    if status == 200:
        assert server.wait(long_job["id"])["status"] == "cancelled"
    else:  # it finished first
        assert status == 409


def test_api_key_and_hosts(tmp_path):
    with Server(tmp_path / "queue", "--api-key", "s3cret") as s:
        status, answer = s.call("GET", "/v1/models")
        assert status == 401 and "API key" in _one_line_error(status, answer)
        status, answer = s.call("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        s.key = "s3cret"
        assert s.call("GET", "/v1/models")[0] == 200
    # beyond loopback without a key: refused before listening, one line
    run = subprocess.run([sys.executable, "-m", "kinema.cli", "serve", "--host", "0.0.0.0", "--port", "0", "--queue", str(tmp_path / "q2"), "--no-ui"],
                         capture_output=True, text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "KINEMA_API_KEY"})  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--api-key" in run.stderr


def test_one_server_per_queue(server):
    run = subprocess.run([sys.executable, "-m", "kinema.cli", "serve", "--port", "0", "--queue", str(server_queue(server)), "--no-ui"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "another kinema serve" in run.stderr and run.stderr.count("\n") == 1


def server_queue(server: Server):
    args = server.process.args
    return Path(args[args.index("--queue") + 1])


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_reach_an_image_and_video_model(tmp_path):
    """A tiny random LTX-Video (text-, image- and video-to-video) served beside the default model: a
    picture and a video go up as files and come back as videos whose metadata holds their hashes."""
    import hashlib

    from kinema.replay import read_metadata
    from kinema.video import write_video

    from ..helpers import save_diffusers_ltx_pipeline

    ltx = tmp_path / "tiny-ltx"
    save_diffusers_ltx_pipeline(ltx)
    clip = tmp_path / "in.mp4"
    write_video(np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), clip, fps=24)
    with Server(tmp_path / "queue", "--model", "shapes", "--model", str(ltx)) as server:
        status, models = server.call("GET", "/v1/models")
        tasks = {m["id"]: m["tasks"] for m in models["data"]}
        assert set(tasks["tiny-ltx"]) == {"text-to-video", "image-to-video", "video-to-video"} and tasks["shapes"] == ["text-to-video"]
        common = {"model": "tiny-ltx", "size": "32x32", "num_frames": "9", "num_inference_steps": "2"}
        png = _png()
        body, ctype = multipart({**common, "prompt": "a red ball"}, {"input_reference": ("first.png", png, "image/png")})
        status, from_image = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
        assert status == 200, from_image
        assert from_image["request"]["image"] == "image.png"  # the upload's own name, never the server's folder
        body, ctype = multipart({**common, "prompt": "the same at night", "strength": "0.6"}, {"video": ("in.mp4", clip.read_bytes(), "video/mp4")})
        status, from_video = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
        assert status == 200, from_video
        for job, data in ((from_image, png), (from_video, clip.read_bytes())):
            done = server.wait(job["id"])
            assert done["status"] == "completed", done
            status, mp4 = server.call("GET", f"/v1/videos/{job['id']}/content")
            (tmp_path / "out.mp4").write_bytes(mp4)
            frames, _ = read_video(tmp_path / "out.mp4")
            assert frames.shape == (9, 32, 32, 3)
            inputs = read_metadata(tmp_path / "out.mp4")["inputs"]
            assert [record["sha256"] for record in inputs.values()] == [hashlib.sha256(data).hexdigest()]


def test_served_models_are_the_given_then_the_shipped_ones_each_once():
    from kinema.checkpoints.layouts import SHIPPED_MODELS, shipped_model_path
    from kinema.server.app import served_models

    assert list(served_models(None)) == list(SHIPPED_MODELS)
    last = list(SHIPPED_MODELS)[-1]
    assert list(served_models([last]))[0] == last and sorted(served_models([last])) == sorted(SHIPPED_MODELS)
    by_folder = served_models([str(shipped_model_path(last))])  # a shipped model given by its folder: served once
    assert len(by_folder) == len(SHIPPED_MODELS)


def test_a_video_uploaded_to_extend(server, tmp_path):
    from kinema.replay import read_metadata
    from kinema.video import write_video

    clip = np.random.default_rng(1).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    write_video(clip, tmp_path / "in.mp4", fps=16)
    body, ctype = multipart({"model": "shapes-ar", "prompt": "a red circle moving right", "seconds": "0.3", "temperature": "0"},  # 0.3 s at 16 fps: 4 new frames
                            {"extend": ("in.mp4", (tmp_path / "in.mp4").read_bytes(), "video/mp4")})  # fmt: skip
    status, job = server.call("POST", "/v1/videos", raw=body, content_type=ctype)
    assert status == 200, job
    assert job["request"]["extend"] == "extend.mp4"
    done = server.wait(job["id"])
    assert done["status"] == "completed", done
    (tmp_path / "out.mp4").write_bytes(server.call("GET", f"/v1/videos/{job['id']}/content")[1])
    assert read_video(tmp_path / "out.mp4")[0].shape == (9, 64, 64, 3)
    assert set(read_metadata(tmp_path / "out.mp4")["inputs"]) == {"extend"}



def test_the_page_sends_only_what_the_model_takes(tmp_path):
    """A token model picked on the page: the hidden diffusion controls (steps 0, a shift) are not
    sent, and what is sent is checked like the API's."""
    from kinema.server.api import ApiError, ServerState
    from kinema.server.app import served_models
    from kinema.server.queue import JobQueue
    from kinema.server.ui import form_request, submit_form

    state = ServerState(JobQueue(tmp_path / "q"), served_models(None))
    values = {"model": "shapes-ar", "prompt": "a red circle", "num_inference_steps": 0, "shift": "3", "cache_threshold": "", "top_k": "5",
              "width": 64, "height": 64, "num_frames": 5, "seed": 2.0, "random_seed": False}  # fmt: skip
    raw, files, task = form_request(state, values)
    assert "num_inference_steps" not in raw and "shift" not in raw and raw["top_k"] == 5 and raw["seed"] == 2 and task == "text"
    job = state.queue.get(submit_form(state, values))
    assert job.request["top_k"] == 5 and job.request["num_frames"] == 5
    with pytest.raises(ApiError, match="top_k must be a whole number"):
        form_request(state, {**values, "top_k": "many"})
    with pytest.raises(ApiError, match="num_frames must be 4k\\+1|4k\\+1"):
        submit_form(state, {**values, "num_frames": 6})


def test_the_page_continues_a_video_and_changes_prompt(tmp_path):
    """The page's "continue a video" task sends the upload as ``extend`` with its overlap (the
    video sets the size), and "one prompt a line" sends a prompt schedule; bad values are one line."""
    from kinema.server.api import ApiError, ServerState
    from kinema.server.app import served_models
    from kinema.server.queue import JobQueue
    from kinema.server.ui import form_request, model_controls, submit_form

    state = ServerState(JobQueue(tmp_path / "q"), served_models(None))
    assert "continue a video" in model_controls(state, "shapes")["tasks"] and "continue a video" in model_controls(state, "shapes-ar")["tasks"]
    write_video(np.zeros((9, 64, 64, 3), np.uint8), tmp_path / "in.mp4", fps=16)
    write_video(np.zeros((9, 72, 72, 3), np.uint8), tmp_path / "odd.mp4", fps=16)
    values = {"model": "shapes", "task": "continue a video", "video": str(tmp_path / "in.mp4"), "prompt": "a red circle moving right",
              "width": 64, "height": 64, "num_frames": 8, "num_inference_steps": 2, "overlap": "5", "seed": 1, "strength": "0.5"}  # fmt: skip
    raw, files, task = form_request(state, values)
    assert task == "extend" and set(files) == {"extend"} and raw["overlap"] == 5
    assert "width" not in raw and "height" not in raw and "strength" not in raw
    job = state.queue.get(submit_form(state, values))
    assert job.request["extend"].endswith("extend.mp4") and job.request["overlap"] == 5 and job.request["num_frames"] == 8
    with pytest.raises(ApiError, match="the video is 72x72; this model makes frames whose sides are multiples of 16: resize it first"):
        submit_form(state, {**values, "video": str(tmp_path / "odd.mp4")})
    with pytest.raises(ApiError, match="overlap is 13 frames but the video has 9"):
        submit_form(state, {**values, "overlap": "13"})
    with pytest.raises(ApiError, match="overlap must be a whole number"):
        form_request(state, {**values, "overlap": "some"})
    with pytest.raises(ApiError, match="continuing a video needs one: upload one"):
        form_request(state, {**values, "video": None})
    assert "overlap" not in form_request(state, {**values, "task": "text-to-video"})[0]  # a hidden field is not sent

    two = "a red circle moving left\n\n  a red circle moving right  \n"
    sched = {"model": "shapes", "task": "text-to-video", "prompt": two, "schedule": True, "prompt_frames": "33, 32", "num_frames": 33,
             "width": 64, "height": 64, "num_inference_steps": 2, "seed": 0}  # fmt: skip
    for spelled in ("33 32", "33;32", " 33, 32, "):
        assert [n for _, n in form_request(state, {**sched, "prompt_frames": spelled})[0]["prompt_schedule"]] == [33, 32]
    raw, _, _ = form_request(state, sched)
    assert raw["prompt_schedule"] == [["a red circle moving left", 33], ["a red circle moving right", 32]] and "num_frames" not in raw and "prompt" not in raw
    job = state.queue.get(submit_form(state, sched))
    assert [n for _, n in job.request["prompt_schedule"]] == [33, 32]
    shared = form_request(state, {**sched, "prompt_frames": "", "num_frames": 65})[0]
    assert shared["prompt_schedule"] == [["a red circle moving left", None], ["a red circle moving right", None]] and shared["num_frames"] == 65
    state.queue.get(submit_form(state, {**sched, "prompt_frames": "", "num_frames": 65}))
    for frames, pattern in [("33", "gives 1 count\\(s\\) for 2 prompt line\\(s\\)"), ("33, many", "frames per prompt must be whole numbers"),
                            ("33, 30", "a multiple of 4")]:  # fmt: skip
        with pytest.raises(ApiError, match=pattern):
            submit_form(state, {**sched, "prompt_frames": frames})
    with pytest.raises(ApiError, match="one a line: none given"):
        form_request(state, {**sched, "prompt": " \n "})
    assert form_request(state, {**sched, "schedule": False})[0]["prompt"] == two.strip()  # unticked: one prompt, as typed


def test_a_long_video_job_progress_only_goes_forward():
    """Each window of a long video runs text, sampling and decoding from the start: the job's percent
    gives each window its share instead of going back to 10% three times."""
    from kinema.server.worker import JobPercent, percent

    one = JobPercent()
    assert [one(*r) for r in [("text", 1, 1), ("denoise", 10, 20), ("decode", 1, 1)]] == [percent("text", 1, 1), percent("denoise", 10, 20), percent("decode", 1, 1)]
    job = JobPercent()
    seen = []
    for w in range(3):
        seen.append(job("windows", w, 3))
        for stage, total in (("text", 1), ("denoise", 20), ("decode", 1)):
            seen += [job(stage, k, total) for k in range(total + 1)]
    seen.append(job("windows", 3, 3))
    assert seen == sorted(seen) and seen[-1] == 99.0  # never back, done at the end
    inside = seen[1 : 1 + 25]  # the first window's stages
    assert max(inside) <= 33.0 and max(seen[27:52]) <= 66.0 and min(seen[27:52]) >= 33.0
    assert len(set(seen)) > 40  # it moves within each window, not only between them


def test_the_gallery_table_is_sent_only_when_its_rows_change(tmp_path):
    """The page's timer asks for the gallery every few seconds; an unchanged table is not sent
    again (re-rendered, its cells would be replaced under a click picking a job)."""
    from kinema.server.api import ServerState
    from kinema.server.app import served_models
    from kinema.server.queue import JobQueue
    from kinema.server.ui import gallery_update, submit_form

    state = ServerState(JobQueue(tmp_path / "q"), served_models(None))
    table, rows = gallery_update(state, None)
    assert table == [] and rows == []
    table, rows = gallery_update(state, rows)
    assert isinstance(table, dict) and set(table) == {"__type__"} and rows == []  # gr.update(): no change
    job = submit_form(state, {"model": "shapes", "prompt": "a red circle moving left", "width": 64, "height": 64, "num_frames": 5,
                              "num_inference_steps": 2, "seed": 3})  # fmt: skip
    table, rows = gallery_update(state, rows)
    assert table == rows and [r[0] for r in rows] == [job]
    assert gallery_update(state, rows)[0] == {"__type__": "update"}
