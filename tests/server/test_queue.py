"""The queue as users lean on it: 20 clients at once, a server killed with SIGKILL mid-job and
started again, a worker that dies under a live server. Every job ends exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from kinema.server.queue import JobQueue
from kinema.video import read_video

from .harness import TINY, Server, decoded, pid_alive

CLIENTS = 20


def _completions(queue: JobQueue) -> Counter:
    return Counter(job for job, event in queue.events() if event == "completed")


def test_twenty_concurrent_clients(tmp_path):
    queue_dir = tmp_path / "queue"
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    with Server(queue_dir) as server:
        start = threading.Barrier(CLIENTS)

        def client(i: int) -> None:
            try:
                start.wait(timeout=60)
                status, job = server.call("POST", "/v1/videos", {"prompt": f"a red circle moving left {i % 4}", "seed": i % 5, **TINY})
                assert status == 200, job
                done = server.wait(job["id"], timeout=600)
                status, data = server.call("GET", f"/v1/videos/{job['id']}/content")
                results[i] = {**done, "bytes": data if status == 200 else None}
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        elapsed = time.monotonic() - t0
        assert not errors, errors[0]
    assert len(results) == CLIENTS and all(r["status"] == "completed" and r["bytes"] for r in results.values())
    queue = JobQueue(queue_dir)
    assert set(_completions(queue).values()) == {1}
    # first in, first out: jobs started in the order they were queued
    started = [job for job, event in queue.events() if event == "started"]
    queued = [job for job, event in queue.events() if event == "queued"]
    assert started == queued
    # the same request gives the same frames, whichever client asked
    by_request: dict[tuple, set] = {}
    for i, r in results.items():
        by_request.setdefault((i % 4, i % 5), set()).add(decoded(r["bytes"]))
    assert all(len(v) == 1 for v in by_request.values())
    (tmp_path / "one.mp4").write_bytes(results[0]["bytes"])
    assert read_video(tmp_path / "one.mp4")[0].shape == (5, 64, 64, 3)
    print(f"\n{CLIENTS} clients: {CLIENTS} jobs completed once each in {elapsed:.1f} s")


def test_sigkill_the_server_then_restart_loses_nothing(tmp_path):
    queue_dir = tmp_path / "queue"
    with Server(queue_dir) as server:
        long = {"num_frames": 33, "num_inference_steps": 20}  # the first: long enough to be killed while it runs
        ids = [server.call("POST", "/v1/videos", {"prompt": f"a blue square moving up {i}", "seed": i, **(long if i == 0 else TINY)})[1]["id"] for i in range(5)]
        running = server.wait(ids[0], until=("in_progress",), timeout=120)
        assert running["status"] == "in_progress"
        worker = JobQueue(queue_dir).get(ids[0]).worker
        assert worker is not None and pid_alive(worker)
        server.kill()
    deadline = time.monotonic() + 30
    while pid_alive(worker) and time.monotonic() < deadline:  # the worker goes with its server
        time.sleep(0.1)
    assert not pid_alive(worker)
    queue = JobQueue(queue_dir)
    assert queue.get(ids[0]).status == "in_progress"  # as the dead server left it
    with Server(queue_dir) as again:
        finals = [again.wait(i, timeout=600) for i in ids]
    assert [f["status"] for f in finals] == ["completed"] * 5
    completions = _completions(queue)
    assert all(completions[i] == 1 for i in ids)
    events = queue.events(ids[0])
    assert events.count((ids[0], "requeued")) == 1 and events.count((ids[0], "started")) == 2
    assert all(queue.events(i).count((i, "started")) == 1 for i in ids[1:])
    assert queue.get(ids[0]).tries == 2
    print(f"\nSIGKILL with {len(ids)} jobs (1 running): after the restart {len(ids)} completed once each; the running one ran twice, the others once")


def test_a_worker_killed_fails_its_job_and_the_server_goes_on(tmp_path):
    queue_dir = tmp_path / "queue"
    with Server(queue_dir) as server:
        first = server.call("POST", "/v1/videos", {"prompt": "a red circle moving left", "num_frames": 33, "num_inference_steps": 20})[1]["id"]
        second = server.call("POST", "/v1/videos", {"prompt": "a red circle moving right", **TINY})[1]["id"]
        server.wait(first, until=("in_progress",), timeout=120)
        worker = JobQueue(queue_dir).get(first).worker
        os.kill(worker, signal.SIGKILL)  # what the OOM killer does
        failed = server.wait(first)
        assert failed["status"] == "failed" and "SIGKILL" in failed["error"]["message"]
        assert server.wait(second)["status"] == "completed"  # a new worker took the next job
        assert server.call("GET", "/v1/models")[0] == 200
    assert _completions(JobQueue(queue_dir))[first] == 0


@pytest.mark.parametrize("tries", [1, 2])
def test_recover_gives_up_after_max_tries(tmp_path, tries):
    queue = JobQueue(tmp_path / "q", max_tries=2)
    job = queue.submit("shapes", {"prompt": "x"})
    for _ in range(tries):
        assert queue.claim(worker=1).id == job.id
        result = queue.recover()
    assert queue.get(job.id).status == ("queued" if tries < 2 else "failed")
    assert (job.id in result["requeued"]) == (tries < 2)


def test_recover_keeps_a_written_video_and_claims_are_fifo(tmp_path):
    queue = JobQueue(tmp_path / "q")
    a, b, c = (queue.submit("shapes", {"prompt": p}) for p in "abc")
    assert queue.claim(worker=1).id == a.id
    queue.output_path(a.id).write_bytes(b"whole")  # written (atomically) before the server died
    assert queue.recover()["completed"] == [a.id]
    assert queue.get(a.id).status == "completed" and _completions(queue)[a.id] == 1
    assert [queue.claim(worker=2).id, queue.claim(worker=2).id, queue.claim(worker=2)] == [b.id, c.id, None]


def test_claims_from_many_threads_never_share_a_job(tmp_path):
    queue = JobQueue(tmp_path / "q")
    ids = {queue.submit("shapes", {"prompt": str(i)}).id for i in range(60)}
    taken: list[str] = []
    lock = threading.Lock()

    def take(worker: int) -> None:
        while (job := queue.claim(worker)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=take, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(taken) == sorted(ids)



def test_a_worker_that_cannot_start_is_retried_with_backoff_not_in_a_loop(tmp_path, capsys):
    import subprocess
    import sys

    from kinema.server.app import Supervisor

    class Failing(Supervisor):
        def _start(self, slot) -> None:  # a worker that exits at once, as a broken install would
            slot.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
            slot.starts += 1
            slot.started_at = time.monotonic()

    supervisor = Failing(JobQueue(tmp_path / "q"), [None], cache_bytes=0)
    supervisor.start()
    try:
        time.sleep(4.0)
    finally:
        supervisor.stop()
    slot = supervisor.slots[0]
    assert 2 <= slot.starts <= 4 and slot.backoff >= 2  # 1 s, then 2 s: not one start every half second
    assert "exited with status 3 as it started" in capsys.readouterr().err
