"""The screenshot of ``kinema serve``'s page that the README shows:
``python -m tests.server.screenshots docs/img`` (needs chromium; about a minute on 2 cores).

The page after one job of the default model at its own settings (33 frames of 64x64, 20 steps),
with the job picked in the gallery."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .browser import Browser
from .harness import Server


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "queue", ui=True) as server:
        b = Browser(Path(tmp) / "profile", width=1280, height=1500)
        try:
            b.goto(server.url + "/")
            b.wait_for("!!document.querySelector('#prompt textarea') && !!document.querySelector('#generate')", timeout=120)
            import time

            time.sleep(3)  # the page's scripts connect a moment after its elements are there
            b.type_into("#prompt textarea", "a red circle moving left")
            b.click("#generate")
            b.wait_for("(() => { const v = document.querySelector('#result video'); return v && v.src ? v.src : ''; })()", timeout=600)
            job = server.call("GET", "/v1/videos")[1]["data"][0]["id"]
            b.wait_for(f"document.querySelector('#gallery').innerText.includes('{job}')", timeout=30)
            b.click("#gallery span", text=job)
            b.wait_for(f"(document.querySelector('#picked-settings') || {{}}).innerText.includes('{job}')", timeout=30)
            b.js("document.querySelectorAll('video').forEach(v => { v.pause(); v.currentTime = 1.0; })")
            b.js("window.scrollTo(0, 0)")
            time.sleep(1.5)  # the seeked frames paint
            b.screenshot(folder / "serve.png")
        finally:
            b.close()
    print(folder / "serve.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
