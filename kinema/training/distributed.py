"""Data-parallel training over the processes torchrun starts (``torchrun --nproc-per-node N -m kinema
train CONFIG.yaml``), applied to the model from outside: the model's code does not change.

Every process builds the same model from the same seed and computes its own share of each
micro-batch: of an optimiser step's ``batch_size * grad_accum`` items (:func:`~.loop.step_indices`,
each with its own generator), micro-batch ``m`` is items ``m * batch_size ...`` as in one process,
and rank ``r`` of ``N`` takes the ``batch_size / N`` of them starting at ``m * batch_size + r *
batch_size / N`` (:func:`item_positions`). Every objective returns the mean over its items (equal
per item: a diffusion or reconstruction loss over equally shaped clips, a cross-entropy over equally
many tokens), so the mean of the N processes' gradients is the one-process gradient of all the
items, up to the order of the floating-point sums.

Two ways to hold the model:

- data parallel (the default): each process holds the whole model, optimiser and EMA, and the step's
  gradients are summed over the processes in one coalesced all-reduce and divided by N
  (:func:`average_gradients`), once per optimiser step after all micro-batches. Plain tensors and
  plain names stay, and it works whichever of the model's methods an objective calls (the VAE's
  ``encode`` and ``decode``, a pixel DiT's ``encode_text``), where DistributedDataParallel and its
  composable ``replicate`` only see ``forward``.
- ``parallel: {fsdp: true}``: FSDP2 (:func:`torch.distributed.fsdp.fully_shard`) on each of the
  model's ``blocks``, then on the root (:func:`shard_model`); parameters, gradients, optimiser
  state and the EMA are DTensors of which each process holds 1/N; a block's parameters are gathered
  for its forward and backward, and gradients are reduce-scattered (averaged) after each backward.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ..errors import KinemaError
from ..parallel.groups import World, current, init_from_env, launched, local_device, shutdown

# Methods that code outside a sharded module calls on it instead of its forward, which FSDP must
# bracket with its gathering and resharding (torch.distributed.fsdp.register_fsdp_forward_method):
# the Wan transformer's and the token model's root project each block's cross-attention keys and
# values (project_context, project_text) before the blocks run; objectives call a VAE's encode and
# decode and a pixel DiT's encode_text. A module inside a block that offers one is sharded as a unit
# of its own, so that it is gathered when the root calls it.
FORWARD_METHODS = ("project_context", "project_text", "encode", "decode", "encode_text")
BUCKET_BYTES = 64 << 20  # gradients all-reduced per coalesced buffer of at most this size (data parallel)
ONE_PROCESS_KINDS = {
    "vq-tokenizer": "its codebook moves by every clip's code assignments, which stay on the process that encoded them",
}  # kinds whose training reads state across items the processes do not share: refused when distributed


def join(device: torch.device) -> tuple[World, torch.device, bool]:
    """Join the process group when torchrun started this process.

    Returns the world, this process's device (a bare ``cuda`` becomes ``cuda:LOCAL_RANK``), and
    whether this call initialised the group (then the caller ends it with :func:`leave`). A process
    not started by torchrun is a world of one and nothing happens.
    """
    if not launched() and not (dist.is_available() and dist.is_initialized()):
        return World(), device, False
    if device.type == "cuda" and device.index is not None and current().size > 1:
        raise KinemaError(f"device {device}: under torchrun each process trains on its own cuda:LOCAL_RANK; set device cuda (no index)")
    owned = not (dist.is_available() and dist.is_initialized())
    world = init_from_env(device)
    return world, local_device(device), owned and world.distributed


def leave(owned: bool) -> None:
    """End the process group if :func:`join` started it."""
    if owned:
        shutdown()


def check_world(config, world: World) -> None:
    """Refuse, in one line, a run that cannot split over ``world``: a ``batch_size`` the process
    count does not divide, or a kind that trains on one process only."""
    if not world.distributed:
        return
    why = ONE_PROCESS_KINDS.get(config.model)
    if why is not None:
        raise KinemaError(f"a {config.model} trains on one process ({why}); start it without torchrun")
    if getattr(config.objective, "adversarial_weight", 0) > 0:
        raise KinemaError("objective.adversarial_weight trains a discriminator on one process (its steps are not shared); start it without torchrun")
    n, b = world.size, config.batch_size
    if b % n:
        counts = [d for d in range(1, b + 1) if b % d == 0]
        raise KinemaError(
            f"batch_size {b} does not split over {n} processes: use a batch_size that is a multiple of {n} "
            f"({n}, {2 * n}, {3 * n}, ...), or start {' or '.join(map(str, counts))} processes"
        )


def item_positions(batch_size: int, micro: int, world: World) -> range:
    """Positions within the optimiser step (``k`` of :func:`~.loop.step_indices`) of the items this
    process computes in micro-batch ``micro``: ``batch_size / N`` consecutive ones (all of
    micro-batch ``micro`` in one process)."""
    per = batch_size // world.size
    start = micro * batch_size + world.rank * per
    return range(start, start + per)


# ------------------------------------------------------------------------------------------------
# Holding the model
# ------------------------------------------------------------------------------------------------
def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2 on the model in place: each of ``model.blocks`` (when it has them) is a unit, with any
    module inside a block that offers one of :data:`FORWARD_METHODS` as a unit of its own, then the
    root holds the rest. The module tree and parameter names do not change. Call after loading
    starting weights and freezing, before making the optimiser and EMA."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    def unit(module: nn.Module) -> None:
        fully_shard(module)
        for name in FORWARD_METHODS:
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)

    for block in getattr(model, "blocks", ()):
        for sub in block.modules():
            if sub is not block and any(callable(getattr(sub, m, None)) for m in FORWARD_METHODS):
                unit(sub)
        unit(block)
    unit(model)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@torch.no_grad()
def broadcast_model(model: nn.Module, world: World) -> None:
    """Data parallel: every process starts from rank 0's weights and buffers (built from the same
    seed, they are equal already; this makes sure)."""
    if not world.distributed:
        return
    for t in model.state_dict().values():
        dist.broadcast(t, src=0)


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], world: World) -> None:
    """Data parallel: replace each parameter's gradient by its mean over the processes (sum in
    coalesced buffers of at most :data:`BUCKET_BYTES`, then divide by N). A parameter that got a
    gradient on some process but not on this one counts zero here; one that got none anywhere
    keeps ``None`` (the optimiser skips it, as one process would)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    if not world.distributed:
        return
    params = list(params)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device if params else "cpu")
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads = []
    for p, any_grad in zip(params, has.tolist()):
        if any_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    filled: dict[tuple, int] = {}  # bytes in each kind's last bucket
    for g in grads:  # buckets per dtype and device, in parameter order (the same on every process)
        kind, size = (g.dtype, g.device), g.numel() * g.element_size()
        lists = buckets.setdefault(kind, [[]])
        if lists[-1] and filled[kind] + size > BUCKET_BYTES:
            lists.append([])
            filled[kind] = 0
        lists[-1].append(g)
        filled[kind] = filled.get(kind, 0) + size
    for lists in buckets.values():
        for bucket in lists:
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat.div_(world.size)
            for g, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                g.copy_(reduced)


def mean_over_ranks(values: Mapping[str, float], world: World, device: torch.device) -> dict[str, float]:
    """The mean of each number over the processes (every process passes the same keys); for the
    metrics, so that the step's loss is that of all its items."""
    if not world.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / world.size for k, v in zip(keys, t.tolist())}


def all_finite(loss: torch.Tensor, world: World) -> bool:
    """Whether the loss is finite on every process (so that all raise together, none waits)."""
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def main_first(world: World, device: torch.device, fn):
    """``fn()`` on rank 0, then on the other processes (which read what rank 0 wrote: a latent or
    token cache, a tokenizer); returns its result. When it raises on rank 0 the others stop too,
    with a KinemaError, instead of waiting for it."""
    if not world.distributed:
        return fn()
    ok = torch.ones(1, dtype=torch.int32, device=device)
    if world.main:
        try:
            result = fn()
        except BaseException:
            dist.broadcast(ok.zero_(), src=0)
            raise
        dist.broadcast(ok, src=0)
        return result
    dist.broadcast(ok, src=0)
    if not ok.item():
        raise KinemaError("rank 0 stopped before training began (its error says why)")
    return fn()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every process calls it), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_full(state: Mapping[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """A state dict whose DTensors (an FSDP model's or its EMA's) are gathered whole, on the CPU,
    on rank 0 (other processes get an empty dict); one tensor at a time, so no process holds more
    than one whole tensor beyond its shards. Every process must call it."""
    out = {}
    for k, v in state.items():
        whole = full_tensor(v.detach())
        if world.main:
            out[k] = whole.cpu()
    return out


def distribute_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor, the same on every process) laid out as ``like``: this process's
    shard of it when ``like`` is a DTensor, else ``full`` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full
