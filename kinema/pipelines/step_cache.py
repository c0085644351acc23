"""Step caching: skip most of a denoiser's blocks at a step whose input barely changed.

First-block caching (as ParaAttention's FBCache and diffusers' ``FirstBlockCache``, a simpler
kin of TeaCache): at every step the first block runs; the change of its residual (its output
minus its input) against the one of the last step that ran in full, ``mean |r - r_full| /
mean |r_full|``, decides. Below ``threshold`` the other blocks are skipped and the residual they
added at that full step is added to the first block's output instead; otherwise they run and their
residual is kept. Comparing against the last full step (not the previous one) bounds the drift a
run of skips can gather.

It is applied from outside the model: for one pipeline call, :meth:`StepCache.attached` replaces
the ``forward`` of each of the model's ``blocks`` (every denoiser of kinema runs ``tokens =
block(tokens, ...)`` over ``model.blocks``) and :meth:`StepCache.wrap` tells it which guidance
branch a model call is (each branch keeps its own residuals: the conditional and unconditional
passes differ). With ``threshold`` 0 nothing is skipped and the output is bit for bit the
uncached one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import KinemaError


@dataclass
class _Branch:
    first_residual: torch.Tensor | None = None  # the first block's residual at the last full step
    rest_residual: torch.Tensor | None = None  # what the other blocks added at that step
    skip: bool = False  # this step's decision
    first_out: torch.Tensor | None = None  # this step's first-block output


@dataclass
class StepCache:
    """Per-call first-block cache state. ``calls``: model calls seen; ``skipped``: those that ran
    only the first block."""

    threshold: float
    calls: int = 0
    skipped: int = 0
    _branches: dict[Any, _Branch] = field(default_factory=dict)
    _current: Any = None

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1 or t != t:
            raise KinemaError(f"cache_threshold must be a number from 0 (off) to 1; got {t!r}")

    @property
    def saved(self) -> float:
        """Share of the model calls that skipped all blocks but the first."""
        return self.skipped / self.calls if self.calls else 0.0

    def wrap(self, denoiser: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]) -> Callable:
        """The denoiser, telling the cache which branch each call is (its context object: one per
        guidance branch for the whole call)."""

        def cached(x: torch.Tensor, t: torch.Tensor, ctx: Any) -> torch.Tensor:
            self._current = self._branches.setdefault(id(ctx), _Branch())
            self.calls += 1
            return denoiser(x, t, ctx)

        return cached

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator["StepCache"]:
        """Patch ``model.blocks`` for the duration of the block (restored after, even on error)."""
        blocks = list(getattr(model, "blocks", []))
        if len(blocks) < 2:
            yield self  # nothing to skip
            return
        originals = [b.forward for b in blocks]
        own = ["forward" in vars(b) for b in blocks]  # a forward already set on the instance (kept)
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            block.forward = self._patched(originals[i], i, last)
        try:
            yield self
        finally:
            for block, forward, instance in zip(blocks, originals, own):
                if instance:
                    block.forward = forward
                else:
                    del block.forward  # back to the class's own

    def _patched(self, forward: Callable, index: int, last: int) -> Callable:
        def run(tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            branch = self._current
            if branch is None:  # a call outside wrap(): no caching
                return forward(tokens, *args, **kwargs)
            if index == 0:
                out = forward(tokens, *args, **kwargs)
                residual = out - tokens
                prev = branch.first_residual
                branch.skip = False
                if prev is not None and prev.shape == residual.shape and self.threshold > 0:
                    change = (residual - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)
                    branch.skip = bool(change < self.threshold)
                if branch.skip:
                    self.skipped += 1
                else:
                    branch.first_residual = residual
                branch.first_out = out
                return out
            if branch.skip:
                return tokens + branch.rest_residual if index == last else tokens
            out = forward(tokens, *args, **kwargs)
            if index == last:
                branch.rest_residual = out - branch.first_out
            return out

        return run
