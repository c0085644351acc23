"""A frozen text encoder that encodes each distinct caption once (training repeats its captions)."""

from __future__ import annotations

import collections
from typing import Sequence

import torch


class CachedTextEncoder:
    """A frozen text encoder that encodes each distinct caption once, alone.

    Training data repeats captions (templates x combinations), and encoding a batch of 32 captions
    with MiniLM costs about as much as the 4 M-parameter transformer's forward pass. Each caption
    is encoded as a batch of one, so its states never depend on which captions shared its batch:
    a resumed run sees exactly the states an uninterrupted one did. At most ``max_entries`` are kept
    (least recently used dropped).
    """

    def __init__(self, encoder, max_entries: int = 16384) -> None:
        self.encoder, self.max_entries = encoder, max_entries
        self._cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            if p in self._cache:
                self._cache.move_to_end(p)
            else:
                self._cache[p] = self.encoder([p])[0].float()
                if len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            out.append(self._cache[p])
        return torch.stack(out)
