"""How many CPU threads to use: the cores no other process is busy on.

Two threads on a core that another process holds run many times slower than one thread (measured:
15x for a training step on a 2-core machine), so kinema sizes its thread pool from what is free now
unless told otherwise (``--threads``, or ``OMP_NUM_THREADS`` set by the user).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores() -> float:
    """Runnable threads of other processes right now (Linux's /proc/loadavg, minus this one),
    else the 1-minute load average."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        return max(0, running - 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def free_cores() -> int:
    """Usable cores minus busy ones, at least 1."""
    return max(1, min(usable_cores(), int(usable_cores() - busy_cores() + 0.5)))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else the free cores unless the user set
    OMP_NUM_THREADS (then torch's own choice stands). Returns the count in use."""
    import torch

    if threads is not None:
        if threads < 1:
            from .errors import KinemaError

            raise KinemaError(f"--threads must be a positive integer; got {threads}")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(free_cores())
    return torch.get_num_threads()


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 4 << 20  # allocations above this get their own mapping, returned to the OS on free
_heap_capped = False


def cap_heap_growth() -> None:
    """Fix glibc's mmap threshold at 4 MiB (once per process; a no-op off glibc).

    glibc raises its threshold as large blocks are freed (up to 32 MiB), after which activations
    come from the heap, where freed blocks stay resident between live ones. A streamed VAE decode
    frees and re-allocates activations of a few MiB at every step, so its resident memory grew
    with clip length while its live tensors stayed bounded (LTX-Video VAE 0.9.1 at 128x128,
    257 frames: 972 MiB above the weights; 604 MiB with the threshold fixed, at the same speed).
    A fixed 128 KiB threshold bounds it too but costs 30% in page faults.
    """
    global _heap_capped
    if _heap_capped:
        return
    _heap_capped = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl)
        pass
