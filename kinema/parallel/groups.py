"""Process groups: how a kinema process learns it is one of several (torchrun's environment), and
the one place that starts and ends ``torch.distributed``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for
every process it starts; :func:`init_from_env` reads them, picks the backend (nccl when the process
has a CUDA device, gloo on the CPU) and binds a CUDA process to its ``LOCAL_RANK``'s device. A
process started without them is a world of one and nothing is initialised, so single-process code
pays nothing.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import KinemaError

DEFAULT_TIMEOUT_S = 600  # a collective that waits longer than this raises instead of hanging for ever


@dataclasses.dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    grouped: bool = False  # inside an initialised process group (torchrun's, also of one process)

    @property
    def distributed(self) -> bool:
        """True for several processes, and for one that torchrun started (a group of one: the
        distributed code paths, nccl or gloo, with nothing to exchange)."""
        return self.size > 1 or self.grouped

    @property
    def main(self) -> bool:
        """True on the one process that writes files and prints results (rank 0)."""
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun (``TORCHELASTIC_RUN_ID``, also for one
    process), or by anything that sets a ``WORLD_SIZE`` above 1."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """This process's place, from an initialised process group, else from torchrun's variables,
    else a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), grouped=True)
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))


def backend_for(device: torch.device | str) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: torch.device | str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun describes (once per process; later calls return the same
    world). ``device``: where this process computes (None: CUDA when there is one). A CUDA
    process is bound to device ``LOCAL_RANK``. A process torchrun did not start initialises nothing;
    one it started alone joins a group of one."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world = current()
    if not launched():
        return world
    if not dist.is_available():
        raise KinemaError("this PyTorch build has no torch.distributed; run one process")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise KinemaError(f"LOCAL_RANK {world.local_rank} has no CUDA device (this host has {torch.cuda.device_count()}); start fewer processes per node")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend_for(dev), timeout=timedelta(seconds=timeout_s))
    return current()


def local_device(device: torch.device | str | None = None) -> torch.device:
    """This process's compute device: ``device`` as given, except that a bare "cuda" becomes
    this rank's ``cuda:LOCAL_RANK`` in a distributed run."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", current().local_rank if launched() or current().grouped else torch.cuda.current_device())
    return dev


def cores_per_process(cores: int) -> int:
    """Intra-op threads for one process: the host's ``cores`` shared by the processes torchrun
    started on it (``LOCAL_WORLD_SIZE``, else the world's size), at least one each."""
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", current().size))))


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
