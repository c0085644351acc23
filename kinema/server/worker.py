"""The worker of ``kinema serve``: a process apart from the web server that runs the queue's jobs,
one at a time, first in first out, on one device.

It is started and watched by the server (:class:`~kinema.server.app.Supervisor`): if it dies (out
of memory, a crash inside a library), the server fails the job it was running with the reason and
starts another worker, so the page and the queue keep running. It ends by itself when the server
is gone (Linux's parent-death signal, and a check of its parent's pid between jobs).

Models stay loaded between jobs within ``--cache-memory`` (:class:`~kinema.pipelines.cache.PipelineCache`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ..errors import Cancelled, KinemaError
from .queue import Job, JobQueue

POLL_SECONDS = 0.2  # how often an idle worker looks for a job
PROGRESS_SECONDS = 0.25  # how often progress is written (a cancel is looked for at every step)
# Where each stage's progress lands in the job's percent: text and picture first, then sampling, then decoding.
STAGE_SPANS = {"prompt": (0, 2), "text": (2, 5), "image": (5, 10), "denoise": (10, 90), "tokens": (10, 90), "decode": (90, 99)}


def percent(stage: str, step: int, total: int) -> float:
    """A job's progress in percent from its pipeline's :class:`~kinema.pipelines.base.Progress`."""
    lo, hi = STAGE_SPANS.get(stage, (0, 99))
    return round(lo + (hi - lo) * (step / total if total else 1.0), 1)


class JobPercent:
    """A job's progress in percent, never going back: a long video's windows (or prompts) each run
    their stages from the start, so each window's stages fill that window's share of the job."""

    def __init__(self) -> None:
        self.windows: tuple[int, int] | None = None  # (windows done, windows) once a long video reports them
        self.last = 0.0

    def __call__(self, stage: str, step: int, total: int) -> float:
        if stage == "windows":
            self.windows = (step, max(total, 1))
            value = 99.0 * min(step, total) / max(total, 1)
        elif self.windows is not None:
            done, n = self.windows
            value = 99.0 * (min(done, n - 1) + percent(stage, step, total) / 100.0) / n
        else:
            value = percent(stage, step, total)
        self.last = max(self.last, round(value, 1))
        return self.last


def one_line(error: BaseException) -> str:
    """An exception as the one line a job's error shows."""
    text = " ".join(str(error).split())
    if isinstance(error, KinemaError):
        return text
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        return f"out of memory: {text or 'the job needs more memory than is free'}; make a smaller or shorter video, or set max_memory"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def run_job(queue: JobQueue, job: Job, *, device: str | None, pipelines: Any, extra: dict | None = None) -> str:
    """Run one claimed job to its end; returns its final status."""
    from ..generation import generate
    from ..request import GenerationRequest

    last = [0.0]
    job_percent = JobPercent()

    def report(progress) -> None:
        value = job_percent(progress.stage, progress.step, progress.total)  # every report: a long video's windows are counted
        now = time.monotonic()
        if now - last[0] >= PROGRESS_SECONDS or progress.step == progress.total:
            last[0] = now
            if queue.set_progress(job.id, value, progress.stage):
                raise Cancelled(job.id)
        elif queue.cancel_requested(job.id):
            raise Cancelled(job.id)

    output = queue.output_path(job.id)
    try:
        fields = dict(job.request)
        if device is not None:
            fields["device"] = device
        request = GenerationRequest.from_json({**fields, "output": str(output)})
        done = generate(request, progress_bar=False, callback=report, pipelines=pipelines, metadata={"job": job.id, **(extra or {})})
        settings = {k: v for k, v in json.loads(done.request.to_json()).items() if k not in ("output", "device")}
        queue.set_settings(job.id, settings)
        queue.complete(job.id, done.paths[0])
        return "completed"
    except Cancelled:
        queue.cancelled(job.id)
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - a job's failure is its own, never the worker's
        queue.fail(job.id, one_line(e))
        return "failed"


def _die_with_parent() -> None:
    """Ask Linux to end this process when the server that started it ends (SIGKILL included)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def work(queue_dir: str, *, device: str | None, cache_bytes: int, parent: int | None, stop_when_idle: bool = False) -> None:
    """The worker's loop: claim, run, repeat, until the parent is gone."""
    from ..pipelines.cache import PipelineCache

    queue = JobQueue(queue_dir)
    pipelines = PipelineCache(cache_bytes)
    me = os.getpid()
    while parent is None or os.getppid() == parent:
        job = queue.claim(me)
        if job is None:
            if stop_when_idle:
                return
            time.sleep(POLL_SECONDS)
            continue
        run_job(queue, job, device=device, pipelines=pipelines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kinema.server.worker", description="run a kinema queue's jobs (started by kinema serve)")
    p.add_argument("--queue", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--cache-memory", type=int, default=0, help="bytes of loaded models kept between jobs")
    p.add_argument("--parent", type=int, default=None, help="the server's pid: stop when it is gone")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.parent is not None:
        _die_with_parent()
        if os.getppid() != args.parent:  # the server died before the signal was asked for
            return 0
    from ..runtime import configure_threads

    configure_threads(args.threads)
    work(args.queue, device=args.device, cache_bytes=args.cache_memory, parent=args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
