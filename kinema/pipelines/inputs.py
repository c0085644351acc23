"""Inputs in pixels: images and videos for conditioning (image-to-video, video-to-video) and clips
for a codec's round trip, from the forms users have them in (PIL images, numpy arrays, tensors,
uint8 or float) to float tensors, with one-line errors for anything else."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import KinemaError
from ..video import to_uint8


@torch.no_grad()
def reconstruct_frames(frames: np.ndarray | torch.Tensor, codec: Any) -> np.ndarray:
    """uint8 (or [0, 1] float) frames (B, F, H, W, 3) -> ``codec.roundtrip`` (a
    :class:`~kinema.models.codec.VideoCodec`, on its device in its dtype) -> uint8 frames (B, F, H, W, 3)."""
    video = _unit_range(frames, "frames")  # (B, F, H, W, 3) in [0, 1]
    if video.dim() != 5 or video.shape[-1] != 3:
        raise KinemaError(f"frames must be (B, F, H, W, 3); got shape {tuple(video.shape)}")
    video = (video.permute(0, 4, 1, 2, 3) * 2 - 1).to(codec.device, codec.dtype)  # (B, 3, F, H, W)
    return to_uint8(codec.roundtrip(video)).cpu().numpy()


def _as_array(x: Any) -> np.ndarray | torch.Tensor:
    if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image, without importing PIL
        return np.array(x.convert("RGB"))  # a writable copy (torch warns on PIL's read-only buffer)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x
    raise KinemaError(f"expected an image (PIL image, numpy array or torch tensor); got {type(x).__name__}")


def _unit_range(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """uint8 -> [0, 1]; floats must already be in [0, 1]. Returns float32."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.dtype == torch.uint8:
        return t.float() / 255
    if not t.is_floating_point():
        raise KinemaError(f"{what} must be uint8 or float in [0, 1]; got dtype {t.dtype}")
    t = t.float()
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise KinemaError(f"{what} holds NaN or infinite values; give uint8 or float in [0, 1]")
    if t.numel() and (float(t.min()) < 0 or float(t.max()) > 1):
        raise KinemaError(f"{what} must be uint8 or float in [0, 1]; got values in [{float(t.min()):.3g}, {float(t.max()):.3g}]")
    return t


def images_to_tensor(image: Any) -> torch.Tensor:
    """One image or a list of images -> (N, 3, H, W) float32 in [0, 1].

    Accepted: PIL images; numpy arrays and uint8 tensors as (H, W, 3) or (N, H, W, 3) (channels last,
    as PIL, PyAV and kinema's own frames are); float tensors as (3, H, W) or (N, 3, H, W) in [0, 1]
    (channels first, as diffusers takes them). uint8 is scaled by 1/255; floats must be in [0, 1].
    """
    if isinstance(image, (list, tuple)):
        if not image:
            raise KinemaError("image is an empty list")
        parts = [images_to_tensor(i) for i in image]
        if len({tuple(p.shape[1:]) for p in parts}) > 1:
            sizes = ", ".join(f"{p.shape[3]}x{p.shape[2]}" for p in parts)
            raise KinemaError(f"the images of a list must have one size; got {sizes} (width x height)")
        return torch.cat(parts)
    x = _as_array(image)
    channels_first = isinstance(x, torch.Tensor) and x.is_floating_point()
    t = _unit_range(x, "image")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise KinemaError(f"image must be (H, W, 3) or (N, H, W, 3) (float tensors: (3, H, W) or (N, 3, H, W)); got shape {tuple(t.shape)}")
    if not channels_first:
        t = t.permute(0, 3, 1, 2)  # (N, 3, H, W)
    if t.shape[1] != 3:
        layout = "(N, 3, H, W)" if channels_first else "(N, H, W, 3)"
        raise KinemaError(f"image must have 3 (RGB) channels in the layout {layout}; got shape {tuple(x.shape)}")
    if not t.shape[0] or not t.shape[2] or not t.shape[3]:
        raise KinemaError(f"image has no pixels: shape {tuple(x.shape)}")
    return t.contiguous()


def videos_to_tensor(video: Any) -> torch.Tensor:
    """One video or a batch -> (N, 3, F, H, W) float32 in [0, 1].

    Accepted: frames channels-last, (F, H, W, 3) or (N, F, H, W, 3), as numpy arrays or tensors,
    uint8 (what ``kinema.video.read_video`` and a pipeline's ``frames`` give) or float in [0, 1]; or
    a list of frames (PIL images or (H, W, 3) arrays), one video.
    """
    if isinstance(video, (str, os.PathLike)):
        raise KinemaError(f"video is a path ({str(video)!r}); give its frames: frames, fps = kinema.video.read_video(path)")
    if isinstance(video, (list, tuple)):
        if not video:
            raise KinemaError("video is an empty list")
        frames = [_unit_range(_as_array(f), "video frame") for f in video]
        if any(f.dim() != 3 for f in frames):
            raise KinemaError("a video given as a list must be a list of (H, W, 3) frames")
        try:
            t = torch.stack(frames)[None]  # (1, F, H, W, 3)
        except RuntimeError:
            raise KinemaError("the frames of a video must all have the same size") from None
    else:
        t = _unit_range(_as_array(video), "video")
        if t.dim() == 4:
            t = t[None]
    if t.dim() != 5 or t.shape[-1] != 3:
        raise KinemaError(f"video must be frames (F, H, W, 3) or (N, F, H, W, 3), channels last; got shape {tuple(t.shape)}")
    if not all(t.shape[:4]):
        raise KinemaError(f"video has no {'frames' if t.shape[0] and not t.shape[1] else 'pixels'}: shape {tuple(t.shape)}")
    return t.permute(0, 4, 1, 2, 3).contiguous()  # (N, 3, F, H, W)


def resize_and_crop(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Scale (..., H, W) frames to cover ``height`` x ``width``, keeping the aspect ratio, then crop
    the centre: LTX-Video's own rule (bilinear, ``resize_and_crop_tensor``; Wan's pictures use
    ``mode="bicubic"``, as Wan resizes them). Unchanged at that size."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    ratio = max(height / h, width / w)
    rh, rw = max(height, int(h * ratio)), max(width, int(w * ratio))
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, h, w), size=(rh, rw), mode=mode, align_corners=False)  # channels alike
    y = y.reshape(*lead, rh, rw)
    top, left = (rh - height) // 2, (rw - width) // 2
    return y[..., top : top + height, left : left + width]


def check_video_to_continue(rules: Any, height: int, width: int) -> None:
    """A video to continue sets the size: one-line KinemaError, naming sizes to resize it to,
    where the model (its :class:`~kinema.request.ModelRules`) cannot make frames of its size."""
    fixed, s = rules.frame_size, rules.spatial_multiple
    if fixed is not None and (height, width) != tuple(fixed):
        raise KinemaError(f"the video is {width}x{height}; this model makes {fixed[1]}x{fixed[0]} frames: resize it first")
    if fixed is None and (height % s or width % s):
        w, h = max(s, width // s * s), max(s, height // s * s)
        raise KinemaError(f"the video is {width}x{height}; this model makes frames whose sides are multiples of {s}: resize it first (to {w}x{h} or {w + s}x{h + s})")
