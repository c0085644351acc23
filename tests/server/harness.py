"""A real ``kinema serve`` for tests: started as its own process on 127.0.0.1 (any free port), with a
queue folder in tmp; it stops by itself (``--stop-after``), dies with the test process (Linux's
parent-death signal) and is killed at the end of the test whatever happened."""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

STOP_AFTER = 600  # seconds a test server lives at most
START_TIMEOUT = 120  # seconds to wait for it to listen (gradio's import is slow on 2 cores)

# The smallest request of the shipped default model: 5 frames of 64x64 in 2 steps (about a second).
TINY = {"num_frames": 5, "num_inference_steps": 2}


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Server:
    """``kinema serve`` in a child process; ``url`` once it listens."""

    def __init__(self, queue: Path, *args: str, ui: bool = False, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "kinema.cli", "serve", "--port", "0", "--queue", str(queue), "--stop-after", str(STOP_AFTER), "--threads", "1", *args]
        if not ui:
            cmd.append("--no-ui")
        self.log = queue.parent / f"{queue.name}-server-{time.monotonic_ns()}.log"
        self.log_fh = open(self.log, "w")
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_fh, text=True,
                                        preexec_fn=_die_with_parent, env={**os.environ, **(env or {})})  # fmt: skip
        self.url = self._wait_for_url()
        self.key: str | None = None

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                if self.process.poll() is not None:
                    raise RuntimeError(f"kinema serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
                continue
            m = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if m:
                return m.group(1)
        raise RuntimeError("kinema serve did not start in time")

    # -- HTTP ----------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             raw: bytes | None = None, content_type: str | None = None, timeout: float = 60) -> tuple[int, Any]:  # fmt: skip
        """(status, parsed JSON or bytes) of one request."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = dict(headers or {})
        if data is not None:
            h.setdefault("Content-Type", content_type or "application/json")
        if self.key is not None:
            h.setdefault("Authorization", f"Bearer {self.key}")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, payload, ctype = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, payload, ctype = e.code, e.read(), e.headers.get("content-type", "")
        return status, (json.loads(payload) if "json" in ctype else payload)

    def wait(self, job_id: str, timeout: float = 300, until: tuple[str, ...] = ("completed", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, job = self.call("GET", f"/v1/videos/{job_id}")
            assert status == 200, job
            if job["status"] in until:
                return job
            time.sleep(0.2)
        raise AssertionError(f"{job_id} did not reach {until} in {timeout} s: {job}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process.stdout.close()
        self.log_fh.close()

    def kill(self) -> None:
        """SIGKILL: the whole server at once, as a crash or the OOM killer would."""
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        self.log_fh.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.kill()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: (bytes, content type)."""
    boundary = "kinema-test-boundary-7d1f"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, ctype) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def decoded(data: bytes) -> bytes:
    """The decoded frames of an mp4's bytes (two jobs' files differ in their metadata: the job id)."""
    import io

    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).tobytes()
