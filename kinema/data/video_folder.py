"""A folder of video files with captions, as a data set of fixed-size clips.

The captions file is JSON lines, one per video: ``{"file": "a.mp4", "caption": "a red ball"}``
(``file`` relative to the folder). Item ``i`` is ``frames`` consecutive frames of video ``i``,
starting at a frame chosen deterministically from ``i`` (so every epoch and every process sees
the same clip), resized so the shorter side is ``size`` and centre-cropped to ``size x size``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import KinemaError
from .records import read_records

CAPTIONS_FILE = "captions.jsonl"  # default captions file name inside the folder


def read_captions(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Parse a jsonl captions file into (file, caption) pairs, with one-line errors naming the line."""
    records = read_records(path, ("file", "caption"), example='{"file": "a.mp4", "caption": "..."}')
    return [(str(r["file"]), str(r["caption"])) for r in records]


def resize_center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(C, F, H, W) -> (C, F, size, size): shorter side resized to ``size`` (bilinear, antialiased), centre crop."""
    c, f, h, w = video.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    frames = video.permute(1, 0, 2, 3)  # (F, C, H, W)
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    frames = frames[:, :, top : top + size, left : left + size]  # (F, C, size, size)
    return frames.permute(1, 0, 2, 3).contiguous()  # (C, F, size, size)


class VideoFolderDataset(torch.utils.data.Dataset):
    """Clips from the videos listed in a captions file; items are dicts like the shapes world's:
    ``video`` float32 (3, frames, size, size) in [-1, 1] and ``caption`` str.

    Args:
        path: the folder of video files.
        captions: the jsonl captions file (default ``path/captions.jsonl``).
        size: output side in pixels.
        frames: consecutive frames per clip; videos shorter than this raise KinemaError.
    """

    def __init__(self, path: str | os.PathLike, captions: str | os.PathLike | None = None, size: int = 64, frames: int = 33) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise KinemaError(f"video folder not found: {self.path}")
        self.entries = read_captions(captions if captions is not None else self.path / CAPTIONS_FILE)
        self.size = size
        self.frames = frames
        self._check_files()

    def _check_files(self) -> None:
        """Every listed video is there, opens as a video and (where its container says how many
        frames it has) is long enough: refused now, in one line, not steps into a run."""
        from ..video import probe_video

        for file, _ in self.entries:
            if Path(file).is_absolute() or ".." in Path(file).parts:
                raise KinemaError(f"captions entry {file!r}: give a file name inside {self.path}")
            n = probe_video(self.path / file)
            if n is not None and n < self.frames:
                raise KinemaError(f"{self.path / file} has {n} frames; clips need {self.frames} (lower data.frames or drop the video)")

    def __len__(self) -> int:
        return len(self.entries)

    def caption(self, index: int) -> str:
        """Item ``index``'s caption, without reading its video."""
        return self.entries[index][1]

    def __getitem__(self, index: int) -> dict:
        from ..video import read_video

        file, caption = self.entries[index]
        video, _fps = read_video(self.path / file)  # (N, H, W, 3) uint8
        n = video.shape[0]
        if n < self.frames:
            raise KinemaError(f"{self.path / file} has {n} frames; clips need {self.frames} (lower data.frames or drop the video)")
        start = int(np.random.default_rng([index, n]).integers(n - self.frames + 1))  # deterministic in the index
        clip = torch.from_numpy(video[start : start + self.frames]).permute(3, 0, 1, 2).float()  # (3, F, H, W) in [0, 255]
        clip = clip / 127.5 - 1.0  # [-1, 1]
        clip = resize_center_crop(clip, self.size).clamp_(-1.0, 1.0)  # (3, F, size, size)
        return {"video": clip, "caption": caption}
