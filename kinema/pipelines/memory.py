"""Running a model within a memory budget: the planner and the weight streaming it applies.

One knob, ``max_memory`` (``--max-memory 12GiB``), and one optional override, ``offload``
(``none``, ``model``, ``block`` or ``auto``). The planner (:func:`plan_memory`) takes each
component's size in its compute dtype, the request's activation estimate per stage (from the
model's :class:`~kinema.request.MemoryModel`) and the budget, and picks the first strategy that
fits:

- ``none``: every component stays where it computes (the default whenever it fits);
- ``model``: components take turns: the text (and image) encoder computes, then gives its memory
  to the transformer, which gives it to the codec for decoding;
- ``block``: as ``model``, and the transformer's blocks stream through ``k`` slots: each block is
  brought in when its first module runs and the one used most recently is sent back when a slot is
  needed (the most recent, not the oldest: blocks run in a cycle, so this keeps ``k - 1`` blocks
  in for good and streams the rest through one slot).

Where weights wait ("parked") depends on the device. On the CPU they stay where the loader put
them: memory-mapped from the safetensors file in the file's dtype, so weights larger than RAM run;
a block sent back has its pages dropped from the process (``madvise(MADV_DONTNEED)``: the kernel
reads them again from its page cache or the disk next time). On CUDA they wait in pinned host
memory and come in on a copy stream, the next block while the current one computes.

It is applied from outside the models: forward pre-hooks on every module that owns weights (and on
the block and component roots) make the weights resident before they are used. A parameter not
resident holds a placeholder of its compute dtype and device that is NaN everywhere (one element,
expanded), so ``compute_dtype`` and device checks read true and any use that bypassed the hooks
shows at once (kinema refuses NaN latents). The values computed are the same as with everything
resident: on the CPU, bit for bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import KinemaError

OFFLOAD_STRATEGIES = ("auto", "none", "model", "block")
STRATEGY_WORDS = {
    "none": "everything resident",
    "model": "components in turns",
    "block": "components in turns, transformer blocks streamed",
}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip
TEXT_MARGIN = 64 << 20  # bytes kept for encoding prompts and pictures (their activations are small)


def parse_bytes(value: Any, what: str = "max_memory") -> int | None:
    """``12GiB``, ``8GB``, ``512MiB``, ``1.5G`` or a number of bytes -> bytes (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise KinemaError(f"{what} must be a size such as 12GiB or 8GB; got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise KinemaError(f"{what} must be a size such as 12GiB, 8GB or 512MiB; got {value!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise KinemaError(f"{what} must be a size such as 12GiB or a number of bytes; got {type(value).__name__}")
    if not n == n or n <= 0 or n == float("inf"):
        raise KinemaError(f"{what} must be a positive size; got {value!r}")
    return int(n)


def wants_plan(budget: int | None, offload: str | None) -> bool:
    """Whether a load is planned: a budget, or a strategy forced other than ``none``."""
    return budget is not None or offload not in (None, "auto", "none")


def check_offload(offload: Any) -> str | None:
    if offload is None:
        return None
    if offload not in OFFLOAD_STRATEGIES:
        raise KinemaError(f"offload must be one of {', '.join(OFFLOAD_STRATEGIES)}; got {offload!r}")
    return offload


def gib(n: int) -> str:
    """Bytes in words: ``8.25 GiB``, ``412 MiB``, ``4 KiB``."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComponentSize:
    """A component's bytes: ``resident`` in its compute dtype on the device; ``parked_on_device``
    what its weights take where they wait (on the CPU: those not mapped from a file); for the
    transformer, ``core`` (all but the blocks) and ``block`` (its largest block) and ``blocks``."""

    resident: int
    parked_on_device: int = 0
    stage: str = "denoise"  # the stage whose activations it computes beside: text, image, denoise, decode
    core: int = 0
    block: int = 0
    blocks: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives and when it moves. ``peak``: the estimated peak in bytes;
    ``slots``: transformer blocks resident at once (``block``)."""

    strategy: str
    budget: int | None
    peak: int
    slots: int = 0
    blocks: int = 0
    device: str = "cpu"
    sizes: dict[str, ComponentSize] = field(default_factory=dict)
    baseline: int = 0  # bytes the process held before loading (CPU: the interpreter, torch's libraries), counted in peak

    def describe(self) -> str:
        """One line: ``memory plan: block (components in turns, transformer blocks streamed, 4 of 40 blocks resident), about 6.1 GiB of an 8.00 GiB budget``."""
        what = STRATEGY_WORDS[self.strategy]
        if self.strategy == "block":
            what += f", {self.slots} of {self.blocks} blocks resident"
        budget = f" of a {gib(self.budget)} budget" if self.budget is not None else ""
        base = f", {gib(self.baseline)} of it the process before loading" if self.baseline else ""
        return f"memory plan: {self.strategy} ({what}), about {gib(self.peak)}{budget}{base}"


def capacity(sizes: dict[str, ComponentSize], strategy: str, slots: int = 0) -> int:
    """Bytes of weights resident at once under ``strategy``: the largest component (``model``), or
    the largest of the other components and the transformer's core with ``slots`` blocks (``block``)."""
    return max((s.core + min(slots, s.blocks) * s.block if strategy == "block" and s.blocks else s.resident) for s in sizes.values())


def stage_peaks(sizes: dict[str, ComponentSize], activations: dict[str, int], strategy: str, slots: int = 0) -> int:
    """The estimated peak bytes of ``strategy`` (``slots`` blocks for ``block``): the weights
    resident at once, those waiting on the device, and the largest stage's activations (a bound:
    the components resident beside a stage are not known in advance)."""
    act = max([TEXT_MARGIN, *activations.values()])
    if strategy == "none":
        return sum(s.resident for s in sizes.values()) + act
    return sum(s.parked_on_device for s in sizes.values()) + capacity(sizes, strategy, slots) + act


def plan_memory(
    sizes: dict[str, ComponentSize],
    activations: dict[str, int],
    budget: int | None,
    offload: str | None = None,
    device: str = "cpu",
    min_slots: int = 1,
    baseline: int = 0,
) -> MemoryPlan:
    """The strategy for ``sizes`` and ``activations`` (bytes per stage) within ``budget`` bytes.

    ``offload`` None or "auto": the first of none, model and block (with the most block slots)
    that fits; a strategy by name: that one (with a budget, block gets the most slots that fit).
    ``min_slots``: blocks resident at least (2 on CUDA, where the next one loads while one computes);
    ``baseline``: bytes already held (the CPU process before loading), part of every peak.
    A budget nothing fits in is a one-line KinemaError saying the least that would do.
    """
    offload = check_offload(offload) or "auto"
    blocks = max((s.blocks for s in sizes.values()), default=0)
    peak = lambda strategy, slots=0: baseline + stage_peaks(sizes, activations, strategy, slots)  # noqa: E731
    plan = lambda strategy, slots=0: MemoryPlan(strategy, budget, peak(strategy, slots), slots, blocks, device, sizes, baseline)  # noqa: E731
    if offload == "block" and not blocks:
        raise KinemaError("offload 'block' streams a transformer's blocks; this model's generator has none to stream: use model")
    if budget is None:
        if offload == "block":
            return plan("block", min(min_slots, blocks))
        return plan("none" if offload == "auto" else offload)
    order = ("none", "model", "block") if offload == "auto" else (offload,)
    for strategy in order:
        if strategy != "block":
            if plan(strategy).peak <= budget:
                return plan(strategy)
            continue
        fits = [k for k in range(blocks, min(min_slots, blocks) - 1, -1) if peak("block", k) <= budget]
        if fits:
            return plan("block", fits[0])
    least = plan("block", min(min_slots, blocks)) if blocks and offload in ("auto", "block") else plan(order[-1])
    how = f"{least.strategy} ({STRATEGY_WORDS[least.strategy]})"
    raise KinemaError(
        f"this request needs at least about {gib(least.peak)} even with {how}; the budget is {gib(budget)}: "
        "raise --max-memory, or make a smaller or shorter video"
    )


# ------------------------------------------------------------------------------------------------
# Pages of memory-mapped files (Linux)
# ------------------------------------------------------------------------------------------------
MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class FileMappings:
    """The address ranges of this process mapped from files (``/proc/self/maps``), read once."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].strip().startswith("/") and "(deleted)" not in parts[5]:
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
        except OSError:
            pass

    def covers(self, t: torch.Tensor) -> bool:
        """Whether ``t``'s bytes lie in one file mapping (a CPU tensor memory-mapped from a file)."""
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return False
        lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        return any(a <= lo and hi <= b for a, b in self.ranges)


_libc = None


def drop_pages(t: torch.Tensor) -> None:
    """Drop the whole pages of a file-mapped CPU tensor from this process (the file keeps them)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    start, end = (lo + _PAGE - 1) // _PAGE * _PAGE, hi // _PAGE * _PAGE
    if end > start:
        _libc.madvise(start, end - start, MADV_DONTNEED)


# ------------------------------------------------------------------------------------------------
# Weight groups and the hooks that bring them in
# ------------------------------------------------------------------------------------------------
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(eq=False)
class _Slot:
    owner: nn.Module
    name: str  # a parameter of ``owner``, or a buffer of a quantised layer (``_stored_as_is``)
    parked: torch.Tensor  # where the weight waits: file-mapped or host memory
    dtype: torch.dtype  # its compute dtype
    file_backed: bool
    placeholder: torch.Tensor  # NaN (after dequantisation, for GGML bytes), expanded to the shape, in the compute dtype on the device

    @property
    def value(self) -> torch.Tensor:
        p = self.owner._parameters.get(self.name)
        return p.data if p is not None else self.owner._buffers[self.name]

    def set(self, t: torch.Tensor) -> None:
        p = self.owner._parameters.get(self.name)
        if p is not None:
            p.data = t
        else:
            self.owner._buffers[self.name] = t

    @property
    def numel(self) -> int:
        return self.parked.numel()


@dataclass(eq=False)
class WeightGroup:
    """Weights that come in and go out together: a component, a transformer's core or one block."""

    name: str
    slots: list[_Slot]
    modules: list[nn.Module]  # where the hooks go
    members: list[nn.Module] = field(default_factory=list)  # every module of the group (their methods are wrapped)
    block: bool = False  # a transformer block (sent back first, the most recently used first)
    resident: bool = False
    next: "WeightGroup | None" = None  # the block after it (prefetched on CUDA)
    ready: Any = None  # the CUDA event of its copy
    used: int = 0

    @property
    def nbytes(self) -> int:
        return sum(s.numel * s.dtype.itemsize for s in self.slots)


class Offloader:
    """Brings weight groups in when their modules run, within ``capacity`` bytes of groups and at
    most ``slots`` blocks (None: as many as the bytes allow)."""

    def __init__(self, groups: list[WeightGroup], capacity: int, device: torch.device, slots: int | None = None) -> None:
        self.groups, self.capacity, self.device, self.slots = groups, capacity, device, slots
        self.clock = 0
        self.loads = 0
        self.reused = 0  # CPU conversions into a spare buffer
        self.handles: list[Any] = []
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._spare: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}  # CPU: buffers of blocks sent back
        self.wrapped: list[tuple[nn.Module, str]] = []
        for g in groups:
            self._park(g)
            hook = self._hook(g)
            for m in g.modules:
                self.handles.append(m.register_forward_pre_hook(hook))
            for m in g.members:
                self._wrap_methods(m, g)

    def _wrap_methods(self, module: nn.Module, group: WeightGroup) -> None:
        """kinema's own public methods of ``module`` (``decode``, ``prepare_context`` ...) bring the
        group in first: they may read weights before any of its modules runs."""
        for cls in type(module).__mro__:
            if not cls.__module__.startswith("kinema.") or cls is nn.Module:
                continue
            for name, value in vars(cls).items():
                if name.startswith("_") or name == "forward" or not callable(value) or name in vars(module):
                    continue
                if isinstance(value, (staticmethod, classmethod, type)):
                    continue
                bound = getattr(module, name)

                def call(*args, _bound=bound, **kwargs):
                    self.need(group)
                    return _bound(*args, **kwargs)

                object.__setattr__(module, name, call)  # an instance attribute: vars(module) holds it until remove()
                self.wrapped.append((module, name))

    def _hook(self, group: WeightGroup):
        def pre_hook(module, args):
            self.need(group)

        return pre_hook

    @property
    def resident_bytes(self) -> int:
        return sum(g.nbytes for g in self.groups if g.resident)

    def need(self, group: WeightGroup) -> None:
        self.clock += 1
        if not group.resident:
            self._make_room(group.nbytes, keep=group, block=group.block)
            self._load(group)
        if group.ready is not None:  # its copy was started on the copy stream
            torch.cuda.current_stream(self.device).wait_event(group.ready)
            group.ready = None
        group.used = self.clock
        nxt = group.next
        if self.copy_stream is not None and nxt is not None and not nxt.resident:
            streamed = sum(g.nbytes for g in self.groups if g.resident and g.block and g is not group)
            if self.resident_bytes - streamed + nxt.nbytes <= self.capacity and (self.slots is None or self.slots >= 2):
                self._make_room(nxt.nbytes, keep=group, block=True)  # room by sending back other blocks only
                self._load(nxt, prefetch=True)

    def _make_room(self, nbytes: int, keep: WeightGroup, block: bool = False) -> None:
        while True:
            blocks = [g for g in self.groups if g.resident and g.block and g is not keep]
            in_slots = len(blocks) + (keep.resident and keep.block)  # the blocks resident now
            if block and self.slots is not None and in_slots + 1 > self.slots and blocks:
                self._park(max(blocks, key=lambda g: g.used))
                continue
            if self.resident_bytes + nbytes <= self.capacity:
                return
            others = [g for g in self.groups if g.resident and not g.block and g is not keep]
            if blocks:
                victim = max(blocks, key=lambda g: g.used)  # most recently used: blocks run in a cycle
            elif others:
                victim = min(others, key=lambda g: g.used)
            else:
                return  # the group alone is over the capacity: it still runs (the plan said so)
            self._park(victim)

    def _load(self, group: WeightGroup, prefetch: bool = False) -> None:
        if not group.block:
            self._spare.clear()  # a component comes in: the blocks' spare buffers go back to the system
        stream = self.copy_stream if prefetch else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for s in group.slots:
                if self.device.type == "cpu" and s.parked.dtype != s.dtype:  # a converted copy, into a spare buffer if one fits
                    spare = self._spare.get((tuple(s.parked.shape), s.dtype))
                    self.reused += bool(spare)
                    buffer = spare.pop() if spare else torch.empty(s.parked.shape, dtype=s.dtype)
                    s.set(buffer.copy_(s.parked))
                else:
                    s.set(s.parked.to(self.device, non_blocking=stream is not None).to(s.dtype))
                if s.file_backed and s.value.data_ptr() != s.parked.data_ptr():
                    drop_pages(s.parked)  # converted: the file's pages are not needed while the copy is in
        if stream is not None:
            group.ready = torch.cuda.Event()
            group.ready.record(stream)
            for s in group.slots:
                s.value.record_stream(torch.cuda.current_stream(self.device))
        group.resident = True
        self.loads += 1

    def _park(self, group: WeightGroup) -> None:
        for s in group.slots:
            copy = s.value
            s.set(s.placeholder)
            if s.file_backed:
                drop_pages(s.parked)
            if group.block and self.device.type == "cpu" and s.parked.dtype != s.dtype:
                # the next block has the same shapes: its conversion reuses these pages instead of new ones
                self._spare.setdefault((tuple(copy.shape), copy.dtype), []).append(copy)
        if group.block:
            self._trim_spare(group.nbytes)
        group.resident, group.ready = False, None

    def _trim_spare(self, limit: int) -> None:
        """Keep at most ``limit`` bytes of spare buffers (one block's worth)."""
        total = 0
        for key in list(self._spare):
            kept = []
            for t in self._spare[key]:
                if total + t.numel() * t.element_size() <= limit:
                    kept.append(t)
                    total += t.numel() * t.element_size()
            self._spare[key] = kept

    def remove(self) -> None:
        """Bring every weight back in and take the hooks away."""
        for g in self.groups:
            if not g.resident:
                self._load(g)
        if self.copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for module, name in self.wrapped:
            vars(module).pop(name, None)
        self.wrapped.clear()


def _keep_fp32(root: nn.Module):
    from ..checkpoints.io import module_pattern

    return module_pattern(getattr(root, "_keep_in_fp32", ()))


def _placeholder(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One element, expanded to ``shape``: what a weight not resident holds. NaN for floats (float8
    included); 0xFF for bytes, which GGML blocks read as a NaN scale."""
    if dtype.is_floating_point:
        value = torch.full((), float("nan"), dtype=torch.float32, device=device).to(dtype)
    else:
        value = torch.full((), 255 if dtype == torch.uint8 else 0, dtype=dtype, device=device)
    return value.expand(shape)


def _weights(module: nn.Module, skip: str | None = None) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """``(dotted name, owner, attribute, tensor)`` for ``module``'s parameters and the stored
    buffers of its quantised layers (``_stored_as_is``: GGML blocks, FP8 weights and scales)."""
    for prefix, owner in module.named_modules():
        if skip is not None and (prefix + ".").startswith(skip):
            continue
        dot = prefix + "." if prefix else ""
        for name, p in owner._parameters.items():
            if p is not None:
                yield dot + name, owner, name, p.data
        if getattr(owner, "_stored_as_is", False):
            for name, b in owner._buffers.items():
                if b is not None and name not in owner._non_persistent_buffers_set:
                    yield dot + name, owner, name, b


def _slots(module: nn.Module, dtype: torch.dtype | None, device: torch.device, maps: FileMappings, keep: Any, prefix: str = "",
           skip: str | None = None) -> list[_Slot]:  # fmt: skip
    """``module``'s weights (their dotted names ``prefix`` + name, matched against ``keep``, the
    root's float32 patterns), except those under ``skip``. A quantised layer's tensors keep their
    dtype."""
    out = []
    for name, owner, attr, own in _weights(module, skip):
        target = own.dtype
        if own.dtype in _FLOATS and not getattr(owner, "_stored_as_is", False):
            target = torch.float32 if keep is not None and keep.match(prefix + name) else (dtype or own.dtype)
        file_backed = device.type == "cpu" and maps.covers(own)
        if device.type == "cuda":
            parked = own.to("cpu").pin_memory()  # host memory the copy engine reads directly
        else:
            parked = own if file_backed else own.to(target)  # in RAM anyway: wait in the compute dtype
        out.append(_Slot(owner, attr, parked, target, file_backed, _placeholder(own.shape, target, device)))
    return out


def _owners(module: nn.Module) -> list[nn.Module]:
    """``module`` and every submodule that owns weights (where hooks must go)."""
    owns = lambda m: any(True for _ in m.parameters(recurse=False)) or getattr(m, "_stored_as_is", False)  # noqa: E731
    return [module] + [m for m in module.modules() if m is not module and owns(m)]


def component_groups(name: str, root: nn.Module, *, dtype: torch.dtype | None, device: torch.device, maps: FileMappings,
                     split_blocks: bool) -> list[WeightGroup]:  # fmt: skip
    """``root``'s weights as one group, or (``split_blocks``) a core group and one per block."""
    keep = _keep_fp32(root)
    blocks = getattr(root, "blocks", None)
    if not split_blocks or not isinstance(blocks, nn.ModuleList) or not len(blocks):
        return [WeightGroup(name, _slots(root, dtype, device, maps, keep), _owners(root), list(root.modules()))]
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    core_modules = [root] + [m for m in _owners(root)[1:] if id(m) not in in_blocks]
    core_members = [m for m in root.modules() if id(m) not in in_blocks]
    groups = [WeightGroup(f"{name}.core", _slots(root, dtype, device, maps, keep, skip="blocks."), core_modules, core_members)]
    for i, block in enumerate(blocks):
        slots = _slots(block, dtype, device, maps, keep, prefix=f"blocks.{i}.")
        g = WeightGroup(f"{name}.blocks.{i}", slots, _owners(block), list(block.modules()), block=True)
        if groups[-1].block:
            groups[-1].next = g
        groups.append(g)
    return groups


# ------------------------------------------------------------------------------------------------
# A pipeline's components
# ------------------------------------------------------------------------------------------------
STAGE_OF = {"text_encoder": "text", "image_encoder": "image", "transformer": "denoise", "codec": "decode"}


def pipeline_modules(pipe: Any) -> dict[str, nn.Module]:
    """The pipeline's components as modules (a text or image encoder's ``model``), each parameter
    counted once (a pixel DiT's own text tower is part of its transformer)."""
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name in ("transformer", "text_encoder", "image_encoder", "codec"):
        obj = getattr(pipe, name, None)
        module = obj if isinstance(obj, nn.Module) else getattr(obj, "model", None)
        if not isinstance(module, nn.Module):
            continue
        params = [p for p in module.parameters()]
        if not params or any(id(p) in seen for p in params):
            continue
        seen.update(id(p) for p in params)
        out[name] = module
    return out


def _dtype_of(dtypes: Any, name: str) -> torch.dtype | None:
    """A component's compute dtype from one dtype for all or a dict by component (None: as loaded)."""
    return dtypes.get(name) if isinstance(dtypes, dict) else dtypes


def measure(pipe: Any, dtypes: Any, device: torch.device) -> dict[str, ComponentSize]:
    """Each component's :class:`ComponentSize` as loaded (weights in their file dtype, parked),
    computing in ``dtypes`` (one dtype, or a dict by component name)."""
    maps = FileMappings()
    sizes = {}
    for name, module in pipeline_modules(pipe).items():
        keep, dtype = _keep_fp32(module), _dtype_of(dtypes, name)

        def size(named: Iterable[tuple[str, nn.Module, str, torch.Tensor]]) -> tuple[int, int]:
            resident = parked = 0
            for n, owner, _, t in named:
                as_is = getattr(owner, "_stored_as_is", False)
                target = (torch.float32 if keep is not None and keep.match(n) else (dtype or t.dtype)) if t.dtype in _FLOATS and not as_is else t.dtype
                resident += t.numel() * target.itemsize
                if device.type == "cpu" and not maps.covers(t):
                    parked += t.numel() * target.itemsize
            return resident, parked

        resident, parked = size(_weights(module))
        blocks = getattr(module, "blocks", None)
        core = block = n_blocks = 0
        if name == "transformer" and isinstance(blocks, nn.ModuleList) and len(blocks):
            core = size(_weights(module, skip="blocks."))[0]
            block = max(size((f"blocks.{i}.{n}", o, a, t) for n, o, a, t in _weights(b))[0] for i, b in enumerate(blocks))
            n_blocks = len(blocks)
        sizes[name] = ComponentSize(resident, parked, STAGE_OF[name], core, block, n_blocks)
    return sizes


def apply_plan(pipe: Any, plan: MemoryPlan, dtypes: Any, device: torch.device) -> Offloader | None:
    """Put ``pipe``'s weights where ``plan`` says: resident now (``none``), or hooked to come in
    when they run. Returns the :class:`Offloader` (None for ``none``)."""
    maps = FileMappings()
    modules = pipeline_modules(pipe)
    if plan.strategy == "none":
        for name, module in modules.items():
            for s in _slots(module, _dtype_of(dtypes, name), device, maps, _keep_fp32(module)):
                s.set(s.parked.to(device).to(s.dtype))
                if s.file_backed and s.value.data_ptr() != s.parked.data_ptr():
                    drop_pages(s.parked)
        return None
    groups: list[WeightGroup] = []
    for name, module in modules.items():
        groups += component_groups(name, module, dtype=_dtype_of(dtypes, name), device=device, maps=maps, split_blocks=plan.strategy == "block")
    slots = plan.slots if plan.strategy == "block" else None
    offloader = Offloader(groups, capacity(plan.sizes, plan.strategy, plan.slots), device, slots)
    pipe.offloader = offloader
    return offloader


# ------------------------------------------------------------------------------------------------
# The peak actually reached
# ------------------------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> None:
    """Start counting the peak memory afresh (CPU: the process's peak resident set, Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_bytes(device: torch.device) -> int | None:
    """The peak since :func:`reset_peak`: CUDA allocated bytes, or the CPU process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


def current_rss() -> int | None:
    """This process's resident memory now (Linux), in bytes."""
    return _status_bytes("VmRSS")


def _status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None off Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    return None


# ------------------------------------------------------------------------------------------------
# Planning a loaded pipeline
# ------------------------------------------------------------------------------------------------
def place(pipe: Any, budget: int | None, offload: str | None, dtypes: Any, device: torch.device, request: Any = None) -> MemoryPlan:
    """Plan ``pipe`` (loaded with its weights parked on the CPU) for ``request`` (default: the
    model's default clip) within ``budget`` bytes on ``device``, and apply the plan."""
    from ..request import GenerationRequest

    rules = pipe.rules
    if request is None:
        d = rules.defaults
        request = GenerationRequest(prompt="", height=d.height, width=d.width, num_frames=d.num_frames, guidance_scale=d.guidance_scale)
    activations = rules.stage_bytes(request, request.batch)
    sizes = measure(pipe, dtypes, device)
    baseline = (current_rss() or 0) if device.type == "cpu" else 0  # the process itself counts on the CPU
    plan = plan_memory(sizes, activations, budget, offload, device.type, min_slots=2 if device.type == "cuda" else 1, baseline=baseline)
    if device.type != "cpu":
        for module in pipeline_modules(pipe).values():
            for m in module.modules():
                for key, b in m._buffers.items():
                    if b is not None:
                        m._buffers[key] = b.to(device)
    apply_plan(pipe, plan, dtypes, device)
    pipe.memory_plan = plan
    return plan
