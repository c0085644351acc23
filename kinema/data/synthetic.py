"""Tiny procedural clips for tests: a coloured square moving left or right on black."""

from __future__ import annotations

import torch

from ..seeds import make_generator

SYNTHETIC_COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "yellow": (1.0, 1.0, -1.0)}


class SyntheticClips(torch.utils.data.Dataset):
    """Tiny procedural clips for tests: a coloured square moving left or right on black.

    Item i is a pure function of (seed, i): ``video`` float32 (3, frames, size, size) in [-1, 1],
    ``caption`` like "a red square moving right".
    """

    def __init__(self, size: int = 16, frames: int = 5, seed: int = 0, length: int = 8) -> None:
        self.size, self.frames, self.seed, self.length = size, frames, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = make_generator(self.seed, "synthetic", index)
        names = list(SYNTHETIC_COLOURS)
        colour = names[int(torch.randint(len(names), (), generator=g))]
        right = bool(torch.randint(2, (), generator=g))
        side = max(2, self.size // 4)
        top = int(torch.randint(self.size - side + 1, (), generator=g))
        video = torch.full((3, self.frames, self.size, self.size), -1.0)
        for f in range(self.frames):
            x = round(f * (self.size - side) / max(1, self.frames - 1))
            x = x if right else self.size - side - x
            video[:, f, top : top + side, x : x + side] = torch.tensor(SYNTHETIC_COLOURS[colour]).view(3, 1, 1)
        return {"video": video, "caption": f"a {colour} square moving {'right' if right else 'left'}"}
