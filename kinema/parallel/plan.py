"""Sampling over several processes: a :class:`ParallelPlan` and the one step that applies it,
:func:`parallelize`, from outside the model code.

Ranks are laid out as a (guidance G) x (ring r) x (ulysses u) grid, rank = g * P + s with P = r * u
the sequence degree and s = ring index * u + ulysses index:

- **Sequence parallelism** (P > 1): forward pre-hooks on the denoiser's blocks cut the token
  states, and every per-token block input the family's :class:`~kinema.families.SequenceSplit`
  names (RoPE tables, per-token time modulation), into P contiguous chunks (padded to a multiple
  of P); the self-attention modules it names run the distributed attention of
  :mod:`kinema.parallel.attention` (Ulysses inside groups of u consecutive ranks, ring across
  them) through :func:`kinema.models.attention.attention_override`; a forward hook on the last
  block gathers the tokens back (padding dropped), so the head and everything after it run whole
  and every rank of the group gets the same output. Cross-attention to the text stays local.
- **Guidance parallelism** (G = 2): the first half of the ranks computes the conditional
  prediction, the second the unconditional one, and an all-gather between rank s of each half
  gives every rank both (:meth:`Parallelized.exchange_guidance`, which
  :meth:`kinema.pipelines.diffusion.DiffusionPipeline.denoise` calls when the pipeline carries
  a plan).

Every rank draws the same noise from the same seed and ends with the same latents: the result is
the single-process one to float rounding (the merge of attention blocks adds in another order).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import KinemaError
from ..families import FAMILIES, SequenceSplit
from ..models.attention import attention_override
from .attention import SequenceMesh, sequence_parallel_attention


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ParallelPlan:
    sequence: int = 1  # processes that split each forward's tokens (ulysses * ring)
    guidance: int = 1  # 1, or 2: the conditional and unconditional passes on two halves of the processes
    ulysses: int | None = None  # all-to-all degree; None: the largest divisor of `sequence` that divides the heads
    # (the ring degree is sequence / ulysses)

    def __post_init__(self) -> None:
        for name in ("sequence", "guidance") + (("ulysses",) if self.ulysses is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KinemaError(f"{name}-parallel degree must be a positive integer; got {value!r}")
        if self.guidance not in (1, 2):
            raise KinemaError(f"guidance-parallel degree must be 1 or 2 (conditional and unconditional passes); got {self.guidance}")
        if self.ulysses is not None and self.sequence % self.ulysses:
            raise KinemaError(f"the ulysses degree ({self.ulysses}) must divide the sequence-parallel degree ({self.sequence})")

    @property
    def world_size(self) -> int:
        return self.sequence * self.guidance

    @classmethod
    def for_world(cls, world_size: int, sequence: int | None = None, guidance: int | None = None, ulysses: int | None = None) -> ParallelPlan:
        """A plan for ``world_size`` processes: guidance 1 unless given, sequence the rest unless given."""
        guidance = 1 if guidance is None else guidance
        if sequence is None:  # the processes guidance parallelism leaves (a bad guidance degree is refused below)
            sequence = max(1, world_size // guidance) if type(guidance) is int and guidance > 0 else 1
        plan = cls(sequence, guidance, ulysses)
        plan.check_world(world_size)
        return plan

    def check_world(self, world_size: int) -> None:
        if self.world_size != world_size:
            raise KinemaError(
                f"sequence-parallel degree {self.sequence} times guidance-parallel degree {self.guidance} is "
                f"{self.world_size} processes, but this run has {world_size}; make their product the number of processes"
            )

    def degrees(self, heads: int) -> tuple[int, int]:
        """(ulysses u, ring r) for a model with ``heads`` attention heads: u divides the heads."""
        if self.ulysses is not None:
            if heads % self.ulysses:
                raise KinemaError(f"the ulysses degree ({self.ulysses}) must divide the model's {heads} attention heads")
            return self.ulysses, self.sequence // self.ulysses
        u = max(d for d in range(1, self.sequence + 1) if self.sequence % d == 0 and heads % d == 0)
        return u, self.sequence // u


# ------------------------------------------------------------------------------------------------
# The applied plan
# ------------------------------------------------------------------------------------------------
class Parallelized:
    """A plan applied to one denoiser (and pipeline): its process groups and hooks.

    ``mesh``: this rank's sequence group (None when the sequence degree is 1); ``guidance_index``:
    0 (conditional) or 1 (unconditional) with guidance parallelism, else None. :meth:`remove`
    takes the hooks off and the plan off the pipeline.
    """

    def __init__(self, plan: ParallelPlan, mesh: SequenceMesh | None, guidance_group: Any, guidance_index: int | None) -> None:
        self.plan, self.mesh = plan, mesh
        self.guidance_group, self.guidance_index = guidance_group, guidance_index
        self.handles: list[Any] = []
        self.pipeline: Any = None

    @property
    def sequence(self) -> int:
        return self.plan.sequence

    def exchange_guidance(self, mine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's prediction (the conditional one on guidance index 0, the unconditional on 1)
        -> (conditional, unconditional), the same on both ranks of the pair."""
        mine = mine.contiguous()
        parts = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(parts, mine, group=self.guidance_group)
        return parts[0], parts[1]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self.pipeline is not None and getattr(self.pipeline, "parallel", None) is self:
            self.pipeline.parallel = None


def split_of(model: nn.Module) -> SequenceSplit | None:
    """The :class:`SequenceSplit` of the family whose denoiser ``model`` is (None: no family says)."""
    return next((f.sequence_split for f in FAMILIES.values() if f.sequence_split is not None and isinstance(model, f.model_class())), None)


def parallelize(target: Any, plan: ParallelPlan) -> Parallelized:
    """Apply ``plan`` to a denoiser or to a pipeline (then to its ``transformer``, and the plan is
    recorded on the pipeline as ``pipeline.parallel`` for guidance parallelism).

    Every process of the group calls it, in the same order as its other group creations (it makes
    process groups). The process group must be initialised with ``plan.world_size`` processes
    (:func:`kinema.parallel.groups.init_from_env`), unless the plan is one process.

    Returns the :class:`Parallelized` handle (``.remove()`` undoes it).
    """
    pipeline = None if isinstance(target, nn.Module) else target
    model = target if pipeline is None else getattr(target, "transformer", None)
    if not isinstance(model, nn.Module):
        raise KinemaError(f"parallelize takes a denoiser or a pipeline with one (.transformer); got {type(target).__name__}")
    initialised = dist.is_available() and dist.is_initialized()
    plan.check_world(dist.get_world_size() if initialised else 1)
    split = split_of(model)
    if plan.sequence > 1 and split is None:
        known = ", ".join(f.name for f in FAMILIES.values() if f.sequence_split is not None)
        raise KinemaError(f"sequence parallelism covers the {known} families; {type(model).__name__} is not one of their denoisers")
    if pipeline is not None and getattr(pipeline, "parallel", None) is not None:
        raise KinemaError("this pipeline already runs a parallel plan; remove it first (the handle's .remove())")
    if plan.guidance > 1 and (pipeline is None or not hasattr(pipeline, "denoise")):
        raise KinemaError("guidance parallelism applies to a diffusion pipeline (it splits the denoising loop's two passes); pass the pipeline")
    u, r = plan.degrees(model.config.num_heads) if plan.sequence > 1 else (1, 1)
    mesh, guidance_group, guidance_index = _make_groups(plan, u, r)
    done = Parallelized(plan, mesh, guidance_group, guidance_index)
    if mesh is not None:
        _hook_blocks(model, split, mesh, done.handles)
    if pipeline is not None:
        pipeline.parallel = done
        done.pipeline = pipeline
    return done


def _make_groups(plan: ParallelPlan, u: int, r: int) -> tuple[SequenceMesh | None, Any, int | None]:
    """Every group of the plan's grid, created in the same order on every rank (new_group's rule)."""
    if plan.world_size == 1:
        return None, None, None
    rank, p = dist.get_rank(), plan.sequence
    g, s = divmod(rank, p)
    sequence_group = ulysses_group = ring_group = guidance_group = None
    ring_ranks: tuple[int, ...] = (rank,)
    for half in range(plan.guidance):
        base = half * p
        if p > 1:
            group = dist.new_group([base + i for i in range(p)])
            sequence_group = group if half == g else sequence_group
        if u > 1:
            for ring_i in range(r):
                ranks = [base + ring_i * u + j for j in range(u)]
                group = dist.new_group(ranks)
                ulysses_group = group if rank in ranks else ulysses_group
        if r > 1:
            for j in range(u):
                ranks = [base + ring_i * u + j for ring_i in range(r)]
                group = dist.new_group(ranks)
                if rank in ranks:
                    ring_group, ring_ranks = group, tuple(ranks)
    if plan.guidance > 1:
        for i in range(p):
            ranks = [half * p + i for half in range(plan.guidance)]
            group = dist.new_group(ranks)
            guidance_group = group if rank in ranks else guidance_group
    mesh = SequenceMesh(u, r, s, ulysses_group, ring_group, ring_ranks, sequence_group) if p > 1 else None
    return mesh, guidance_group, (g if plan.guidance > 1 else None)


# ------------------------------------------------------------------------------------------------
# The hooks
# ------------------------------------------------------------------------------------------------
class _TokenSplit:
    """One denoiser's split: cuts block inputs into this rank's chunk and gathers the output.

    ``length`` is the real token count of the forward under way (set by the first block's hook)."""

    def __init__(self, split: SequenceSplit, mesh: SequenceMesh) -> None:
        self.split, self.mesh = split, mesh
        self.length = 0

    def chunk(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """This rank's chunk of ``t`` along ``axis`` (length S, padded with zeros to a multiple of P)."""
        p = self.mesh.size
        size = -(-self.length // p)  # C = ceil(S / P)
        pad = size * p - self.length
        if pad:
            t = F.pad(t, (0, 0) * (t.ndim - 1 - axis) + (0, pad))  # zeros after the last token
        return t.narrow(axis, self.mesh.index * size, size)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's chunk of the token states, whole again (padding dropped)."""
        axis = self.split.token_axis
        parts = [torch.empty_like(t) for _ in range(self.mesh.size)]
        dist.all_gather(parts, t.contiguous(), group=self.mesh.sequence_group)
        return torch.cat(parts, dim=axis).narrow(axis, 0, self.length)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return sequence_parallel_attention(q, k, v, mask, self.mesh, self.length)


def _argument(positions: dict[str, int], name: str) -> Callable:
    """Getter and setter of a block argument given by position or by keyword."""
    at = positions[name]

    def get(args: list, kwargs: dict) -> Any:
        return kwargs[name] if name in kwargs else (args[at] if at < len(args) else None)

    def put(args: list, kwargs: dict, value: Any) -> None:
        if name in kwargs:
            kwargs[name] = value
        else:
            args[at] = value

    return get, put


def _hook_blocks(model: nn.Module, split: SequenceSplit, mesh: SequenceMesh, handles: list) -> None:
    blocks = list(getattr(model, split.blocks))
    if not blocks:
        raise KinemaError(f"{type(model).__name__} has no blocks to split its tokens over")
    state = _TokenSplit(split, mesh)
    params = [n for n in inspect.signature(type(blocks[0]).forward).parameters][1:]  # without self
    positions = {n: i for i, n in enumerate(params)}
    missing = [n for n in (split.hidden, *(n for n, _ in split.per_token)) if n not in positions]
    if missing:
        raise KinemaError(f"{type(blocks[0]).__name__}.forward has no argument {', '.join(missing)} (the family's SequenceSplit is out of date)")
    hidden = _argument(positions, split.hidden)
    per_token = [(name, axis, *_argument(positions, name)) for name, axis in split.per_token]

    def cut(first: bool) -> Callable:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            args = list(args)
            if first:
                x = hidden[0](args, kwargs)  # (B, S, dim): the whole sequence
                state.length = x.shape[split.token_axis]
                hidden[1](args, kwargs, state.chunk(x, split.token_axis))  # (B, C, dim)
            for name, axis, get, put in per_token:
                t = get(args, kwargs)
                if not isinstance(t, torch.Tensor) or t.shape[axis] == 1:  # absent, or the same for every token
                    continue
                if t.shape[axis] != state.length:
                    raise KinemaError(f"block input {name} has {t.shape[axis]} entries on axis {axis}; expected one per token ({state.length}) or 1")
                put(args, kwargs, state.chunk(t, axis))
            return tuple(args), kwargs

        return pre_hook

    def gather_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return state.gather(output)  # (B, S, dim)

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(cut(i == 0), with_kwargs=True))
    handles.append(blocks[-1].register_forward_hook(gather_hook))
    for block in blocks:
        attn = block.get_submodule(split.self_attention) if split.self_attention else block
        _hook_attention(attn, state.attention, handles)


def _hook_attention(module: nn.Module, fn: Callable, handles: list) -> None:
    """Inside ``module``'s forward, :func:`~kinema.models.attention.attention` is ``fn`` (set back
    after it, even when it raises)."""
    entered: list[Any] = []

    def enter(mod: nn.Module, args: tuple) -> None:
        cm = attention_override(fn)
        cm.__enter__()
        entered.append(cm)

    def leave(mod: nn.Module, args: tuple, output: Any) -> None:
        if entered:
            entered.pop().__exit__(None, None, None)

    handles.append(module.register_forward_pre_hook(enter))
    handles.append(module.register_forward_hook(leave, always_call=True))
