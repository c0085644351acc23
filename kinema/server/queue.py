"""The job queue of ``kinema serve``: jobs in SQLite (WAL) in the queue folder, so that nothing is
lost when a process dies.

A job goes ``queued`` -> ``in_progress`` -> ``completed`` | ``failed`` | ``cancelled``. Workers
take jobs first in first out with :meth:`JobQueue.claim` (one ``BEGIN IMMEDIATE`` transaction: two
workers never take the same job). The video is written (atomically) before the job is marked
``completed``, so a completed job always has its whole mp4.

When the whole server dies, the jobs it was running stay ``in_progress``; the next server calls
:meth:`JobQueue.recover` before it starts a worker: a job whose mp4 is already there is marked
completed (it is not made twice), the others go back to the queue, at most ``max_tries`` times in
all. A worker that dies under a live server (out of memory, a crash in a library) fails its job
with the reason instead (:meth:`JobQueue.fail_worker_jobs`): retrying a job that kills its worker
would kill the next one too.

Every change of state is also appended to an ``events`` table, so that tests and operators can see
that each job started and completed exactly as often as it says.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import KinemaError

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
DEFAULT_MAX_TRIES = 3  # runs of one job across server restarts before it is failed
DB_NAME = "jobs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- first in, first out
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,                  -- the request as queued (JSON)
    settings TEXT,                          -- the filled-in request it ran with (JSON)
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    progress REAL NOT NULL DEFAULT 0,       -- percent
    stage TEXT,
    error TEXT,
    tries INTEGER NOT NULL DEFAULT 0,
    worker INTEGER,                         -- pid of the worker running it
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output TEXT                             -- the mp4, relative to the queue folder
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    event TEXT NOT NULL,                    -- queued, started, completed, failed, cancelled, requeued
    at REAL NOT NULL,
    detail TEXT
);
"""


@dataclass
class Job:
    """One row of the queue."""

    id: str
    seq: int
    status: str
    model: str
    request: dict[str, Any]
    created_at: float
    settings: dict[str, Any] | None = None
    started_at: float | None = None
    completed_at: float | None = None
    progress: float = 0.0
    stage: str | None = None
    error: str | None = None
    tries: int = 0
    worker: int | None = None
    cancel_requested: bool = False
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    d["request"] = json.loads(d["request"])
    d["settings"] = json.loads(d["settings"]) if d["settings"] else None
    d["cancel_requested"] = bool(d["cancel_requested"])
    return Job(**d)


class JobQueue:
    """The queue in ``folder`` (created if missing): ``jobs.sqlite``, ``outputs/``, ``uploads/``.

    Each call opens its own connection, so one JobQueue serves any number of threads, and any
    number of processes may open the same folder.
    """

    def __init__(self, folder: str | os.PathLike, *, max_tries: int = DEFAULT_MAX_TRIES) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise KinemaError(f"--queue must be a folder; {self.folder} is a file")
        if max_tries < 1:
            raise KinemaError(f"max_tries must be at least 1; got {max_tries}")
        self.max_tries = max_tries
        try:
            for sub in ("outputs", "uploads"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        except (OSError, sqlite3.DatabaseError) as e:
            raise KinemaError(f"cannot use {self.folder} as a queue: {' '.join(str(e).split())}") from None

    # -- plumbing ----------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.folder / DB_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes; a power cut may lose the last commits
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once (no other writer in between its reads and writes)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _event(db: sqlite3.Connection, job: str, event: str, detail: str | None = None) -> None:
        db.execute("INSERT INTO events (job, event, at, detail) VALUES (?, ?, ?, ?)", (job, event, time.time(), detail))

    def output_path(self, job_id: str) -> Path:
        return self.folder / "outputs" / f"{job_id}.mp4"

    def upload_dir(self, job_id: str) -> Path:
        return self.folder / "uploads" / job_id

    @staticmethod
    def new_id() -> str:
        return "video_" + secrets.token_hex(12)

    # -- the web side --------------------------------------------------------------------------------
    def submit(self, model: str, request: dict[str, Any], *, job_id: str | None = None, max_queued: int | None = None) -> Job:
        """Queue a job (``request``: JSON-able). ``max_queued``: refuse when that many wait already."""
        job_id = job_id or self.new_id()
        with self._write() as db:
            if max_queued is not None:
                waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
                if waiting >= max_queued:
                    raise QueueFull(f"the queue is full ({waiting} jobs waiting); try again later")
            db.execute(
                "INSERT INTO jobs (id, status, model, request, created_at) VALUES (?, 'queued', ?, ?, ?)",
                (job_id, model, json.dumps(request, ensure_ascii=False), time.time()),
            )
            self._event(db, job_id, "queued")
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, limit: int = 100, after: str | None = None, status: str | None = None, newest_first: bool = True) -> list[Job]:
        """Jobs in order of submission (newest first by default); ``after``: continue past that id."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if after is not None:
            with self._connect() as db:
                row = db.execute("SELECT seq FROM jobs WHERE id = ?", (after,)).fetchone()
            if row is None:
                raise KinemaError(f"no video {after!r} to list after")
            where.append("seq < ?" if newest_first else "seq > ?")
            args.append(row[0])
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        with self._connect() as db:
            return [_job(r) for r in db.execute(sql, (*args, limit)).fetchall()]

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one at once, a running one at its worker's next step. None: no such job."""
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                db.execute("UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ?", (time.time(), job_id))
                self._event(db, job_id, "cancelled")
            elif row[0] == "in_progress":
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get(job_id)

    def events(self, job_id: str | None = None) -> list[tuple[str, str]]:
        """(job, event) pairs in the order they happened."""
        with self._connect() as db:
            if job_id is None:
                return [tuple(r) for r in db.execute("SELECT job, event FROM events ORDER BY n").fetchall()]
            return [tuple(r) for r in db.execute("SELECT job, event FROM events WHERE job = ? ORDER BY n", (job_id,)).fetchall()]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {status: 0 for status in STATUSES} | {r[0]: r[1] for r in rows}

    # -- the worker side ------------------------------------------------------------------------------
    def claim(self, worker: int) -> Job | None:
        """Take the oldest queued job for ``worker`` (a pid), or None when none waits."""
        with self._write() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'in_progress', started_at = ?, tries = tries + 1, worker = ?, progress = 0, stage = NULL WHERE id = ?",
                (time.time(), worker, row[0]),
            )
            self._event(db, row[0], "started", str(worker))
        return self.get(row[0])

    def set_progress(self, job_id: str, percent: float, stage: str | None) -> bool:
        """Record progress; returns whether a cancel was asked for."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND status = 'in_progress'", (percent, stage, job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_settings(self, job_id: str, settings: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET settings = ? WHERE id = ?", (json.dumps(settings, ensure_ascii=False), job_id))

    def _finish(self, job_id: str, status: str, *, error: str | None = None, output: str | None = None, only_running: bool = True) -> None:
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or (only_running and row[0] != "in_progress"):
                return  # finished already (never twice)
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, output = COALESCE(?, output), completed_at = ?, worker = NULL, "
                "progress = CASE WHEN ? = 'completed' THEN 100 ELSE progress END WHERE id = ?",
                (status, error, output, time.time(), status, job_id),
            )
            self._event(db, job_id, status, error)

    def complete(self, job_id: str, output: Path) -> None:
        """Mark a job completed; its mp4 (``output``) must already be whole on disk."""
        self._finish(job_id, "completed", output=str(Path(output).relative_to(self.folder)))

    def fail(self, job_id: str, error: str) -> None:
        self._finish(job_id, "failed", error=" ".join(error.split())[:2000])

    def cancelled(self, job_id: str) -> None:
        self._finish(job_id, "cancelled")

    def fail_worker_jobs(self, worker: int, reason: str) -> list[str]:
        """Fail the jobs a dead worker (pid) was running, with ``reason``; returns their ids."""
        with self._connect() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'in_progress' AND worker = ?", (worker,)).fetchall()]
        for job_id in ids:
            if self.cancel_requested(job_id):
                self.cancelled(job_id)
            else:
                self.fail(job_id, reason)
        return ids

    def recover(self) -> dict[str, list[str]]:
        """After a server died: the jobs left ``in_progress`` are completed (their mp4 is whole on
        disk), failed (tried ``max_tries`` times) or queued again, keeping their place in line."""
        done: dict[str, list[str]] = {"completed": [], "requeued": [], "failed": []}
        with self._write() as db:
            rows = db.execute("SELECT id, tries, cancel_requested FROM jobs WHERE status = 'in_progress'").fetchall()
            now = time.time()
            for job_id, tries, cancel in rows:
                out = self.output_path(job_id)
                if out.is_file():
                    db.execute(
                        "UPDATE jobs SET status = 'completed', output = ?, completed_at = ?, worker = NULL, progress = 100 WHERE id = ?",
                        (str(out.relative_to(self.folder)), now, job_id),
                    )
                    self._event(db, job_id, "completed", "recovered: its video was written before the server stopped")
                    done["completed"].append(job_id)
                elif cancel:
                    db.execute("UPDATE jobs SET status = 'cancelled', completed_at = ?, worker = NULL WHERE id = ?", (now, job_id))
                    self._event(db, job_id, "cancelled")
                elif tries >= self.max_tries:
                    error = f"the server stopped during this job {tries} times; it is not tried again"
                    db.execute("UPDATE jobs SET status = 'failed', error = ?, completed_at = ?, worker = NULL WHERE id = ?", (error, now, job_id))
                    self._event(db, job_id, "failed", error)
                    done["failed"].append(job_id)
                else:
                    db.execute("UPDATE jobs SET status = 'queued', worker = NULL, progress = 0, stage = NULL WHERE id = ?", (job_id,))
                    self._event(db, job_id, "requeued")
                    done["requeued"].append(job_id)
        return done


class QueueFull(KinemaError):
    """Too many jobs wait already (HTTP 429)."""
