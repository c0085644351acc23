"""``kinema serve``: one process with the web page and the HTTP API, and a worker process (one per
device) that runs the queue's jobs.

The server owns the queue folder (a lock file keeps a second server off it), recovers the jobs a
previous server left running (:meth:`~kinema.server.queue.JobQueue.recover`), starts the workers
and watches them (:class:`Supervisor`): a worker that dies fails its job with the reason, and a new
one takes the next job. The page and the API only read and write the queue; no model is loaded in
the web process (the prompt extension model excepted, when the page's button asks for it).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KinemaError
from .api import ServedModel, ServerState, build_api
from .queue import JobQueue

LOOPBACK = ("127.0.0.1", "::1", "localhost")
API_KEY_ENV = "KINEMA_API_KEY"
WATCH_SECONDS = 0.5  # how often the supervisor looks at its workers


def describe_exit(code: int) -> str:
    """A worker's exit status in words (a negative status is the signal that ended it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (the system's out-of-memory killer, or someone, killed it)" if -code == signal.SIGKILL else ""
        return f"the worker process running this job was ended by {name}{why}; the server goes on"
    return f"the worker process running this job exited with status {code}; the server goes on"


QUICK_DEATH_SECONDS = 10.0  # a worker that dies this soon after its start, with no job, is failing to start
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class WorkerSlot:
    device: str | None
    process: subprocess.Popen | None = None
    starts: int = 0
    started_at: float = 0.0
    backoff: float = 0.0  # seconds before the next start, after quick deaths (doubling, at most MAX_BACKOFF_SECONDS)
    next_start: float = 0.0


class Supervisor:
    """Starts one worker process per device and restarts it when it dies, failing its job."""

    def __init__(self, queue: JobQueue, devices: list[str | None], *, cache_bytes: int, threads: int | None = None) -> None:
        self.queue = queue
        self.slots = [WorkerSlot(d) for d in devices]
        self.cache_bytes = cache_bytes
        self.threads = threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, slot: WorkerSlot) -> None:
        cmd = [sys.executable, "-m", "kinema.server.worker", "--queue", str(self.queue.folder),
               "--cache-memory", str(self.cache_bytes), "--parent", str(os.getpid())]  # fmt: skip
        if slot.device is not None:
            cmd += ["--device", slot.device]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        slot.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        slot.starts += 1
        slot.started_at = time.monotonic()

    def start(self) -> None:
        for slot in self.slots:
            self._start(slot)
        self._thread = threading.Thread(target=self._watch, name="kinema-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            now = time.monotonic()
            for slot in self.slots:
                if self._stop.is_set():
                    return
                if slot.process is None:  # waiting out a backoff
                    if now >= slot.next_start:
                        self._start(slot)
                    continue
                code = slot.process.poll()
                if code is None:
                    continue
                failed = self.queue.fail_worker_jobs(slot.process.pid, describe_exit(code))
                if not failed and now - slot.started_at < QUICK_DEATH_SECONDS:  # dying at start: do not spin
                    slot.backoff = min(MAX_BACKOFF_SECONDS, max(1.0, slot.backoff * 2))
                    print(f"kinema serve: the worker{f' on {slot.device}' if slot.device else ''} exited with status {code} as it started; "
                          f"starting another in {slot.backoff:g} s", file=sys.stderr, flush=True)  # fmt: skip
                else:
                    slot.backoff = 0.0
                slot.process, slot.next_start = None, now + slot.backoff
                if slot.backoff == 0.0:
                    self._start(slot)

    def stop(self) -> None:
        """Stop the workers (a job they were running is run again by the next server)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for slot in self.slots:
            p = slot.process
            if p is not None and p.poll() is None:
                p.terminate()
        for slot in self.slots:
            p = slot.process
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.poll() is None]


def lock_queue(folder: Path):
    """Hold ``server.lock`` in the queue folder for this process's life; refuse if another holds it."""
    fh = open(folder / "server.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        other = fh.read().strip() or "another process"
        fh.close()
        raise KinemaError(f"another kinema serve ({other}) is using the queue {folder}; stop it or give another --queue") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh


def check_host(host: str, api_key: str | None) -> None:
    """Loopback is open to this machine's users only; anything wider needs an API key."""
    if host in LOOPBACK:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    if not api_key:
        raise KinemaError(f"--host {host} would let other machines in: give --api-key (or set {API_KEY_ENV}) first, or serve on 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (a port in use is one line)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise KinemaError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def served_models(names: list[str] | None) -> dict[str, ServedModel]:
    """The models a server offers: those given (directories or shipped names; the first is the
    default), then the shipped ones. Each one's rules are read now, so a bad model stops the server
    before it starts."""
    from ..checkpoints.layouts import SHIPPED_MODELS
    from ..pipelines.loading import resolve_model

    out: dict[str, ServedModel] = {}
    roots: set[str] = set()
    given_names = list(names or [])
    for given in given_names + [m for m in SHIPPED_MODELS if m not in given_names]:
        layout = resolve_model(given)
        shipped = given in SHIPPED_MODELS and not Path(given).exists()
        path = given if shipped else str(Path(given).resolve())
        root = str(layout.root.resolve())
        if root in roots:
            continue  # the same model twice (a shipped one given by its folder, say)
        roots.add(root)
        name = given if shipped else Path(path).name
        if name in out:  # two folders of one name (or a folder named like a shipped model): the longer name
            name = f"{name}-shipped" if shipped else path
        out[name] = ServedModel(name, path, layout.rules())
    return out


def serve(
    *,
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    queue_dir: str | os.PathLike = "kinema-queue",
    api_key: str | None = None,
    devices: list[str | None] | None = None,
    cache_bytes: int | None = None,
    max_tries: int = 3,
    max_upload_bytes: int = 64 << 20,
    max_queued: int = 1_000,
    prompt_extend: str | None = None,
    ui: bool = True,
    stop_after: float | None = None,
    threads: int | None = None,
    announce: Any = None,
) -> None:
    """Run the server until Ctrl-C, SIGTERM or ``stop_after`` seconds. ``announce(url)`` is called
    once it listens (default: print the URL)."""
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    check_host(host, api_key)
    if prompt_extend is not None:
        from ..text.prompt_extend import check_extend_dir

        prompt_extend = str(check_extend_dir(prompt_extend))
    offered = served_models(models)  # everything that can be refused is, before the queue folder is made
    if Path(queue_dir).exists() and not Path(queue_dir).is_dir():
        raise KinemaError(f"--queue must be a folder; {queue_dir} is a file")
    sock = bind(host, port)
    try:
        queue = JobQueue(queue_dir, max_tries=max_tries)
        lock = lock_queue(queue.folder)
    except BaseException:
        sock.close()
        raise
    state = ServerState(queue, offered, api_key=api_key, max_upload_bytes=max_upload_bytes,
                        max_queued=max_queued, prompt_extend=prompt_extend)  # fmt: skip
    app = build_api(state)
    if ui:
        from .ui import mount_ui

        app = mount_ui(app, state)
    recovered = queue.recover()
    if cache_bytes is None:
        from ..runtime import available_memory

        cache_bytes = (available_memory("cpu") or 0) // 2  # half of what is free now: models kept between jobs
    supervisor = Supervisor(queue, devices or [None], cache_bytes=cache_bytes, threads=threads)
    supervisor.start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    timer = None
    if stop_after is not None:
        timer = threading.Timer(stop_after, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    try:
        if announce is not None:
            announce(url, recovered)
        else:
            again = sum(len(v) for v in recovered.values())
            print(f"kinema serve: {url} (queue {queue.folder}{f', {again} interrupted jobs recovered' if again else ''})", flush=True)
        server.run(sockets=[sock])
    finally:
        if timer is not None:
            timer.cancel()
        supervisor.stop()
        sock.close()
        lock.close()
