"""How many CPU threads to use, and what memory is free.

kinema runs on every core this process may use (its CPU affinity) unless told otherwise
(``--threads``, or ``OMP_NUM_THREADS`` set by the user). The count is not read off the machine's
load: the thread count changes the order of floating-point sums, so a load-dependent default would
make the same request give different frames from one run to the next. Two threads on a core that
another process holds do run many times slower than one (measured: 15x for a training step on a
2-core machine), so :func:`contention_hint` says when fewer threads would be faster.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
    """Set torch's intra-op threads: ``threads`` if given, else every usable core unless the user
    set OMP_NUM_THREADS (then torch's own choice stands). Returns the count in use. The default
    depends on the machine, never on its load, so a request gives the same frames every time."""
    import torch

    if threads is not None:
        torch.set_num_threads(check_threads(threads))
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cores())
    return torch.get_num_threads()


def contention_hint(threads: int) -> str | None:
    """A one-line note when other processes hold cores that ``threads`` threads would share (two
    threads on a busy core run many times slower than one), else None."""
    free = free_cores()
    if threads <= free:
        return None
    return (f"note: other processes are busy on {usable_cores() - free} of this machine's {usable_cores()} cores; "
            f"--threads {free} may run much faster (the last bits of the result can differ with the thread count)")  # fmt: skip


# The one piece of process-wide state kinema sets: glibc's mmap threshold (below). It is global by
# nature (malloc's), so it is set once per process and said here rather than passed around.
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


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for a new allocation on ``device``: the CPU's available memory (the lesser of
    Linux's MemAvailable and what a cgroup limit leaves), a CUDA device's free memory; None where
    it cannot be told (then requests are not refused for memory)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    limit = _cgroup_headroom()
    if free is None:
        return limit
    return free if limit is None else min(free, limit)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_headroom() -> int | None:
    """What a cgroup v2 memory limit leaves (memory.max - memory.current), or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


MAX_THREADS_PER_CORE = 4  # --threads above this many per usable core is refused (more cannot help; huge counts crash)


def check_threads(threads: int) -> int:
    """``threads`` if it is a whole number from 1 to a few per usable core, else a one-line KinemaError."""
    from .errors import RequestError

    most = MAX_THREADS_PER_CORE * usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most:
        raise RequestError(f"{{0}} must be a whole number from 1 to {most} ({usable_cores()} usable cores here); got {threads!r}", "threads")
    return threads


# ------------------------------------------------------------------------------------------------
# The precision a device computes fast in
# ------------------------------------------------------------------------------------------------
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (x86: AVX-512 BF16 or AMX-BF16; Arm: the
    BF16 extension). Without them PyTorch emulates bf16 products, many times slower than float32
    (5-300x on the AVX2 reference machine); with them bf16 is about twice as fast.

    ``KINEMA_CPU_BF16=0`` (or ``1``) overrides what is detected: the default precision then stays
    float32 (or becomes bfloat16) on this machine."""
    import torch

    forced = os.environ.get("KINEMA_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"

    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            found = caps()
            if found.get("avx512_bf16") or found.get("amx_bf16"):
                return True
        except (RuntimeError, AttributeError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features") and {"avx512_bf16", "amx_bf16", "bf16"} & set(value.split()):
                    return True
    except OSError:
        pass
    return False


def fast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype the transformer and the encoders compute in when none is asked for ("auto"):
    bfloat16 on a CPU with native bf16 instructions, float32 on one without; bfloat16 on a CUDA
    device that supports it, else float16; None (the files' own) elsewhere."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
