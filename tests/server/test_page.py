"""The web page in a real headless browser: type a prompt, press Generate, wait for the video, check
the mp4 the page serves; a bad value shows one line and the page goes on. With
``KINEMA_SCREENSHOTS=DIR`` the test also saves the screenshots the docs show."""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import pytest

from .browser import Browser, find_browser
from .harness import Server

pytestmark = pytest.mark.skipif(find_browser() is None, reason="no chromium here (Debian: apt install chromium)")


def _status(b: Browser) -> str:
    return b.js("(document.querySelector('#status') || {}).innerText || ''")


def test_generate_from_the_page(tmp_path):
    shots = Path(os.environ["KINEMA_SCREENSHOTS"]) if os.environ.get("KINEMA_SCREENSHOTS") else None
    with Server(tmp_path / "queue", ui=True) as server:
        b = Browser(tmp_path / "profile")
        try:
            b.goto(server.url + "/")
            b.wait_for("!!document.querySelector('#prompt textarea') && !!document.querySelector('#generate')", timeout=90)
            # a bad value first: one line on the page, nothing queued
            b.type_into("#prompt textarea", "a red circle moving left")
            b.type_into("#frames input", "6")
            # the first press doubles as the probe that the page's scripts are connected (the elements
            # can be there a moment before): pressed again until its answer shows; a refusal queues nothing
            shown = ""
            for _ in range(12):
                b.click("#generate")
                try:
                    shown = b.wait_for("(() => { const t = (document.querySelector('#status') || {}).innerText || ''; return t.includes('error') ? t : ''; })()", timeout=10)
                    break
                except AssertionError:
                    continue
            errors = [line for line in shown.splitlines() if "error" in line]  # the status box also holds gradio's timer
            assert len(errors) == 1 and errors[0].startswith("error: num_frames must be 4k+1"), shown
            assert server.call("GET", "/v1/videos")[1]["data"] == []
            # then a good one
            b.type_into("#frames input", "5")
            b.type_into("#steps input", "2")
            b.type_into("#seed input", "11")
            if shots:
                shots.mkdir(parents=True, exist_ok=True)
                b.screenshot(shots / "serve-form.png")
            b.click("#generate")
            src = b.wait_for("(() => { const v = document.querySelector('#result video'); return v && v.src ? v.src : ''; })()", timeout=300)
            assert "done:" in _status(b) and "seed 11" in _status(b)
            data = urllib.request.urlopen(src, timeout=60).read()
            import av

            with av.open(io.BytesIO(data)) as c:
                frames = list(c.decode(video=0))
                tags = dict(c.metadata)
            assert len(frames) == 5 and frames[0].width == 64
            record = json.loads(tags["kinema"])
            assert record["request"]["seed"] == 11 and record["request"]["prompt"] == "a red circle moving left"
            jobs = server.call("GET", "/v1/videos")[1]["data"]
            assert [j["status"] for j in jobs] == ["completed"] and jobs[0]["settings"]["num_inference_steps"] == 2
            # the gallery lists it
            b.wait_for(f"document.querySelector('#gallery').innerText.includes({json.dumps(jobs[0]['id'])})", timeout=30)
            # pick it in the gallery: its settings show; "Use these settings" puts them back in the form
            b.type_into("#prompt textarea", "something else")
            b.click("#gallery span", text=jobs[0]["id"])  # a data cell (the td elements are a hidden header table)
            b.wait_for(f"(document.querySelector('#picked-settings') || {{}}).innerText.includes({json.dumps(jobs[0]['id'])})", timeout=30)
            b.click("#reuse")
            b.wait_for("document.querySelector('#prompt textarea').value === 'a red circle moving left'", timeout=30)
            assert b.js("document.querySelector('#steps input').value") == "2"
            if shots:
                b.js("window.scrollTo(0, 0)")
                b.screenshot(shots / "serve-done.png")
        finally:
            b.close()


def test_continue_a_video_from_the_page(tmp_path):
    """The "continue a video" task: upload a clip, the past's length shows, Generate makes the clip
    followed by the new frames; "one prompt a line" shows the frames-per-prompt box."""
    import numpy as np

    from kinema.video import read_video, write_video

    clip = np.zeros((9, 64, 64, 3), np.uint8)
    clip[:, 20:40, 20:40] = (230, 40, 40)
    write_video(clip, tmp_path / "in.mp4", fps=12)
    with Server(tmp_path / "queue", ui=True) as server:
        b = Browser(tmp_path / "profile")
        try:
            b.goto(server.url + "/")
            b.wait_for("!!document.querySelector('#task') && !!document.querySelector('#generate')", timeout=90)
            visible = "(s => { const e = document.querySelector(s); return !!e && e.getClientRects().length > 0; })"
            assert not b.js(f"{visible}('#overlap')") and not b.js(f"{visible}('#prompt-frames')")
            for _ in range(12):  # the radio can be there a moment before its handler; choosing it again changes nothing
                b.click("#task label", text="continue a video")
                try:
                    b.wait_for(f"{visible}('#overlap') && {visible}('#input-video')", timeout=10)
                    break
                except AssertionError:
                    continue
            b.click("#schedule label")  # the page's handlers answer by now
            b.wait_for(f"{visible}('#prompt-frames')", timeout=30)
            b.click("#schedule label")
            b.wait_for(f"!{visible}('#prompt-frames')", timeout=30)
            root = b.send("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
            node = b.send("DOM.querySelector", nodeId=root, selector="#input-video input[type=file]")["nodeId"]
            b.send("DOM.setFileInputFiles", nodeId=node, files=[str(tmp_path / "in.mp4")])
            b.wait_for("!!document.querySelector('#input-video video')", timeout=60)
            b.type_into("#prompt textarea", "a red square moving right")
            b.type_into("#frames input", "4")
            b.type_into("#steps input", "2")
            b.type_into("#overlap textarea, #overlap input", "5")
            b.click("#generate")
            src = b.wait_for("(() => { const v = document.querySelector('#result video'); return v && v.src ? v.src : ''; })()", timeout=300)
            assert "done:" in _status(b), _status(b)
            (tmp_path / "out.mp4").write_bytes(urllib.request.urlopen(src, timeout=60).read())
            frames, fps = read_video(tmp_path / "out.mp4")
            assert frames.shape == (13, 64, 64, 3) and fps == 12  # the clip, then 4 new frames, at its rate
            jobs = server.call("GET", "/v1/videos")[1]["data"]
            assert jobs[0]["request"]["overlap"] == 5 and jobs[0]["request"]["extend"].startswith("extend")
        finally:
            b.close()
