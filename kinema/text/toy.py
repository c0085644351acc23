"""A frozen stand-in text encoder for tests: each word maps to a fixed random vector."""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from ..seeds import make_generator


class ToyTextEncoder:
    """prompts -> (B, max_length, dim) float32, one fixed random vector per word, zero past the last
    word (and all zero for ""). Registered as the text encoder ``toy`` (training tests)."""

    def __init__(self, dim: int, max_length: int) -> None:
        self.dim, self.max_length = dim, max_length

    @functools.lru_cache(maxsize=1024)
    def _word(self, word: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=make_generator("toy-text", word))

    def __call__(self, prompts: Sequence[str], *, device=None, dtype=None) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.max_length, self.dim)
        for i, p in enumerate(prompts):
            for j, w in enumerate(p.lower().split()[: self.max_length]):
                out[i, j] = self._word(w)
        return out.to(device=device or out.device, dtype=dtype or out.dtype)
