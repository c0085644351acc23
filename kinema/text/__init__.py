"""Text encoders behind one small interface.

A text encoder turns a list of prompts into token-level states for cross-attention:
``encoder(prompts, device=..., dtype=...) -> (batch, max_length, dim)``, with the states of the
padding positions set to zero (the convention of Wan 2.1 and diffusers' Wan pipelines).

Encoders for denoisers that mask the padding themselves (LTX-Video) also provide
``encode_padded(prompts, max_length=..., device=..., dtype=...) -> (states, mask)``
(:class:`MaskedTextEncoder`): states of every position and the (batch, max_length) token mask.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


class TextEncoder(Protocol):
    """What every text encoder in kinema provides."""

    dim: int  # width of the token states
    max_length: int  # number of token positions returned per prompt

    def __call__(
        self, prompts: Sequence[str], *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:  # (batch, max_length, dim)
        ...


class MaskedTextEncoder(TextEncoder, Protocol):
    """A text encoder that also returns the token mask, for denoisers that mask padding (LTX-Video)."""

    def encode_padded(
        self,
        prompts: Sequence[str],
        *,
        max_length: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (batch, max_length, dim), (batch, max_length) bool
        ...
