"""Stopping a generation: Ctrl-C prints one short line and exits 130; SIGKILL at any moment leaves
no partial file and no hidden temporary (the mp4 is linked into place whole, or not at all)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import files_under

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--frames", "5", "--steps", "2"]


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kinema.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, **kwargs)  # fmt: skip


def _collect(stream, into: list[str]) -> threading.Thread:
    def read():
        for chunk in iter(lambda: stream.read(1), ""):
            into.append(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait_for(text: list[str], word: str, proc: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while word not in "".join(text):
        assert proc.poll() is None, f"ended before {word!r}: {''.join(text)[-1000:]}"
        assert time.monotonic() < deadline, f"no {word!r} within {limit} s"
        time.sleep(0.05)


def _lines(text: str) -> list[str]:
    """stderr without progress bars."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "|" not in line]


@pytest.mark.parametrize("when", ["loading", "sampling"])
def test_ctrl_c_is_one_line_exit_130_and_no_file(when, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "a red circle moving left", "-o", str(out / "clip.mp4"), "--frames", "33", "--steps", "50"]
    proc = _start(args)
    err: list[str] = []
    reader = _collect(proc.stderr, err)
    if when == "sampling":
        _wait_for(err, "sampling", proc)
    else:
        time.sleep(0.5)  # Python is up; kinema is importing or loading
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    text = "".join(err)
    assert proc.returncode == 130, text[-2000:]
    assert _lines(text) == ["interrupted"], text[-2000:]
    assert "Traceback" not in text
    assert files_under(out) == []


def test_sigkill_while_sampling_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _start(["generate", "a red circle moving left", "-o", str(out / "clip.mp4"), "--steps", "50"])
    err: list[str] = []
    _collect(proc.stderr, err)
    _wait_for(err, "sampling", proc)
    proc.kill()
    proc.wait(timeout=30)
    assert files_under(out) == []


KILL_WHILE_WRITING = """
import os, signal, sys
import kinema.checkpoints.io as io

real_link = io._link

def link_then_die(fd, path):
    if sys.argv[1] == "before-link" or path.name.endswith(".part"):
        if sys.argv[1] == "after-temporary-link":
            real_link(fd, path)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_link(fd, path)

io._link = link_then_die
from kinema.cli import main
main(sys.argv[2:])
"""


def _run_killed_while_writing(stage: str, output: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = ["generate", "a red circle moving left", "-q", "-o", str(output), *SMALL]
    done = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, stage, *args], env=env, cwd=REPO, capture_output=True, timeout=300)
    return done.returncode


def test_sigkill_while_writing_a_new_file_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    assert _run_killed_while_writing("before-link", out / "clip.mp4") == -signal.SIGKILL
    assert files_under(out) == []  # the bytes were in an anonymous file; the kernel reclaimed it


def test_sigkill_while_replacing_keeps_the_old_file_and_the_next_write_cleans_up(tmp_path):
    """Replacing a file links the new one under a hidden name, then renames it over the old one; a
    kill in that instant keeps the old file whole, and the next write to that path removes the
    dead process's hidden file."""
    from kinema.checkpoints.io import write_bytes_atomically

    out = tmp_path / "out"
    out.mkdir()
    target = out / "clip.mp4"
    target.write_bytes(b"old video")
    assert _run_killed_while_writing("after-temporary-link", target) == -signal.SIGKILL
    assert target.read_bytes() == b"old video"
    assert len(files_under(out)) == 2  # the dead writer's hidden file
    write_bytes_atomically(target, b"new video")
    assert target.read_bytes() == b"new video"
    assert files_under(out) == ["clip.mp4"]


# Ctrl-C at an unlucky moment, made deterministic: the handler's flag decides, whatever error follows.
UNLUCKY = {
    # numpy's C module cut short by Ctrl-C, imported again by torch: an ImportError, not KeyboardInterrupt
    "import-error": "import kinema.cli as c\n"
    "def main():\n"
    "    c._INTERRUPTED.append(2)\n"
    "    raise ImportError('cannot load module more than once per process')\n"
    "c.main = main\n"
    "c.entry()\n",
}


@pytest.mark.parametrize("case", sorted(UNLUCKY))
def test_ctrl_c_at_an_unlucky_moment_is_still_one_line_and_130(case):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", UNLUCKY[case]], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_a_swallowed_ctrl_c_stops_generate_at_the_next_step(tmp_path):
    """Some library's bare ``except:`` ate the KeyboardInterrupt: the flag still stops the run."""
    script = (
        "import sys, kinema.cli as c\n"
        "c._INTERRUPTED.append(2)\n"
        f"sys.argv = ['kinema', 'generate', 'a red circle moving left', '-o', {str(tmp_path / 'clip.mp4')!r}, *{SMALL!r}]\n"
        "c.entry()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert _lines(done.stderr) == ["interrupted"], done.stderr[-2000:]
    assert files_under(tmp_path) == []


def test_a_ctrl_c_in_a_callback_python_cannot_raise_from_prints_nothing():
    """A KeyboardInterrupt raised in a weakref callback (as in an import's module-lock callback) is
    not printed as "Exception ignored in ..."; any other unraisable error still is."""
    import sys
    import weakref

    from kinema.cli import quiet_interrupts

    seen = []
    previous = sys.unraisablehook
    sys.unraisablehook = quiet_interrupts(lambda unraisable: seen.append(type(unraisable.exc_value).__name__))
    try:
        for error in (KeyboardInterrupt, ValueError):

            class Thing:
                pass

            thing = Thing()

            def callback(ref, error=error):
                raise error

            ref = weakref.ref(thing, callback)  # noqa: F841 - kept alive until the object goes
            del thing
    finally:
        sys.unraisablehook = previous
    assert seen == ["ValueError"]
