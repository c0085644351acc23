"""Exponential moving average of a model's weights, kept in float32 beside the model."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..checkpoints.io import module_pattern


class EMA:
    """``shadow = d * shadow + (1 - d) * weights`` after every optimiser step, with the warm-up
    ``d = min(decay, (1 + step) / (10 + step))``: early averages forget the random initial weights
    quickly (a plain 0.999 average keeps e^-3 = 5% of them after 3,000 steps).

    Floating-point parameters and buffers are averaged; other buffers are copied, and so is the
    state of the modules a model lists in its ``_ema_copy`` class attribute (dotted prefixes: a VQ
    codebook, already a moving average of its own). The shadow is a plain state dict with the
    model's keys, so it saves and loads like the model's weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone() for k, v in model.state_dict().items()}
        copy = module_pattern(getattr(model, "_ema_copy", ()))
        self.copied = frozenset(k for k in self.shadow if copy is not None and copy.match(k))  # keys copied, not averaged

    @torch.no_grad()
    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimiser step ``step`` (0-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, model: nn.Module, step: int) -> None:
        """Move the shadow towards the model's current weights after optimiser step ``step`` (0-based)."""
        weight = 1.0 - self.decay_at(step)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point() and k not in self.copied:
                s.lerp_(v.detach().float(), weight)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (float32), keyed like the model's state dict."""
        return self.shadow

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the shadow (e.g. from a checkpoint's ema.safetensors); keys must match exactly."""
        if set(state) != set(self.shadow):
            diff = sorted(set(state) ^ set(self.shadow))[:6]
            raise ValueError(f"EMA state does not match the model; differing keys: {diff}")
        for k, v in state.items():
            self.shadow[k].copy_(v)
