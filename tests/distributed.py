"""Starting small process groups in tests: gloo on the CPU, bound to 127.0.0.1, each process with a
bounded timeout, so a test that goes wrong fails in seconds instead of hanging CI.

``run_workers(fn, n, *args)`` starts ``n`` processes that each call ``fn(rank, n, *args)`` inside an
initialised gloo group, and returns what each returned (rank order). ``fn`` must be importable (a
module-level function of a test module), and what it returns must pickle.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from datetime import timedelta

import torch.multiprocessing as mp

WORKER_TIMEOUT_S = 120  # the most any one collective waits; a broken test fails after this


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, n: int, port: int, fn, args, queue) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # n processes on a 2-core machine: one thread each
    try:
        dist.init_process_group("gloo", rank=rank, world_size=n, timeout=timedelta(seconds=WORKER_TIMEOUT_S))
        result = fn(rank, n, *args)
        # By value: the queue's own pickler would pass tensors as handles to this process's shared
        # memory, which are gone once it exits before the parent reads them (a FileNotFoundError there).
        queue.put((rank, "ok", pickle.dumps(result)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn, n: int, *args, timeout_s: float = 4 * WORKER_TIMEOUT_S) -> list:
    """Run ``fn(rank, n, *args)`` in ``n`` gloo processes; returns their results in rank order, or
    raises with the first failing rank's traceback."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, n, port, fn, args, queue), daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    errors: list[str] = []
    try:
        for _ in range(n):
            rank, status, value = queue.get(timeout=timeout_s)
            if status == "ok":
                results[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 30)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError(errors[0])
    return [results[r] for r in range(n)]
