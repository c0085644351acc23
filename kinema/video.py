"""Video files through PyAV: write H.264 mp4 (deterministically, atomically) and read frames back."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .checkpoints.io import write_bytes_atomically
from .errors import KinemaError


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8, rounding like diffusers' postprocess."""
    video = (video.float() / 2 + 0.5).clamp(0, 1)  # (B, 3, F, H, W) in [0, 1]
    return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()  # (B, F, H, W, 3)


# libx264's threads, fixed: left on "auto" (0), x264 sizes its thread pool, and with PyAV's default
# sliced threading the number of slices in the bitstream, from the CPUs the process may use, so the
# same frames decoded differently on another machine or under another CPU affinity. Frame threads
# put nothing of the count into the pixels; a constant count also keeps the file's bytes the same.
ENCODER_THREADS = 4
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


@functools.lru_cache(maxsize=None)
def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def x264_options(codec: str) -> dict[str, str]:
    """Options that keep x264 deterministic: on a CPU with AVX-512, x264 is held to its AVX2 kernels.
    Its AVX-512 ones gave other bytes (and other decoded pixels, up to 15 levels) now and then for
    the same frames: 6 different files in 100 encodes of one 13-frame clip on an AMD EPYC with
    AVX-512, 1 with AVX2 kernels (x264's kernels are otherwise bit-exact with its C code)."""
    return {"x264-params": "asm=AVX2"} if codec == "libx264" and _has_avx512() else {}


def encode_video(
    frames: np.ndarray | torch.Tensor | Iterable[np.ndarray],
    fps: float,
    *,
    container: str = "mp4",
    crf: int = 18,
    codec: str = "libx264",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Encode uint8 frames (F, H, W, 3), or an iterable of (h, w, 3) / (n, h, w, 3) chunks, to the
    bytes of a video file (H.264 in an mp4 by default).

    ``metadata``: container tags (name -> text) to store in the file, e.g. kinema's own
    (:mod:`kinema.replay`); they read back from ``av.open(path).metadata`` (Matroska upper-cases
    the names).

    Deterministic: the same frames (and tags) give the same bytes, and so the same decoded frames,
    whatever the machine's cores or the process's CPU affinity (see :data:`ENCODER_THREADS`).
    """
    import io

    import av

    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise KinemaError(f"fps must be a positive number; got {fps!r}")
    tags = dict(metadata or {})
    for name, value in tags.items():
        if not isinstance(name, str) or not name or not isinstance(value, str) or "\0" in name + value:
            raise KinemaError(f"video metadata must map names to text; got {name!r}: {type(value).__name__}")
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = [np.asarray(frames)]
    options = {}
    if tags and container in ("mp4", "mov"):
        options["movflags"] = "use_metadata_tags"  # free-form tags (else the muxer keeps only iTunes' names)
    if container == "matroska":
        options["fflags"] = "+bitexact"  # else the muxer writes a random segment UID: the same frames, other bytes
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container, options=options) as out:
        for name, value in tags.items():
            out.metadata[name] = value
        stream = None
        for chunk in frames:
            chunk = np.asarray(chunk)
            if chunk.ndim == 3:
                chunk = chunk[None]
            if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[-1] != 3:
                raise KinemaError(f"frames must be uint8 (F, H, W, 3); got {chunk.dtype} {chunk.shape}")
            if stream is None:
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = chunk.shape[1], chunk.shape[2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.thread_type = "FRAME"
                stream.codec_context.thread_count = ENCODER_THREADS
                stream.options = {"crf": str(crf), **x264_options(codec)}
            for frame in chunk:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    out.mux(packet)
        if stream is None:
            raise KinemaError("no frames to write")
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


def write_video(
    frames: np.ndarray | torch.Tensor | Iterable[np.ndarray],
    path: str | os.PathLike,
    fps: float,
    *,
    crf: int = 18,
    codec: str = "libx264",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write uint8 frames (F, H, W, 3), or an iterable of (h, w, 3) / (n, h, w, 3) chunks, to a
    video file (.mp4, .mkv or .mov), deterministically (:func:`encode_video`), with the container
    tags ``metadata`` (name -> text) if given.

    The video is encoded in memory, then the file appears whole or not at all, and a process killed
    at any moment leaves no partial or temporary file (:func:`~kinema.checkpoints.io.write_bytes_atomically`).
    """
    path = Path(path)
    container = CONTAINER_FORMATS.get(path.suffix.lower())
    if container is None:
        raise KinemaError(f"output must be an .mp4, .mkv or .mov file; got {path.name!r}")
    data = encode_video(frames, fps, container=container, crf=crf, codec=codec, metadata=metadata)
    return write_bytes_atomically(path, data)


def missing_file(path: Path, kind: str) -> KinemaError:
    """The one-line error for a path that is not a regular file: missing, a folder, or another kind
    of entry (a device, a pipe)."""
    if not path.exists():
        return KinemaError(f"{kind} file not found: {path}")
    if path.is_dir():
        return KinemaError(f"{path} is a directory, not a {kind} file")
    return KinemaError(f"{path} is not a file")


def ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's reason on one line, without the errno and path PyAV adds
    (``[Errno 1094995529] Invalid data found when processing input: 'x.mp4'``)."""
    reason = " ".join(str(getattr(error, "strerror", None) or error).split())
    return reason[:1].lower() + reason[1:]


def _unreadable(path: Path, kind: str, error: Exception) -> KinemaError:
    reason = f"it holds no {kind} stream" if isinstance(error, IndexError) else ffmpeg_reason(error)
    return KinemaError(f"could not read {kind} {path}: {reason}")


def is_still_image(demuxer: str) -> bool:
    """Whether FFmpeg's demuxer (``container.format.name``) reads still images: its piped image
    readers (``png_pipe``, ``jpeg_pipe``, ``webp_pipe`` ...) and ``image2``. GIF and APNG have
    demuxers of their own and keep their frame rate."""
    return demuxer == "image2" or demuxer.endswith("_pipe")


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a whole video as uint8 (F, H, W, 3) and its frame rate (0.0 where it has none: a still
    image read as a one-frame video, whose 25 fps is FFmpeg's placeholder, not the picture's)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "video")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = 0.0 if is_still_image(container.format.name) else float(stream.average_rate or stream.guessed_rate or 0)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, IndexError) as e:
        raise _unreadable(path, "video", e) from None
    if not frames:
        raise KinemaError(f"video {path} has no frames")
    return np.stack(frames), fps


def probe_video(path: str | os.PathLike) -> int | None:
    """Open a video's container without decoding it: its frame count as the container states it
    (None where it states none), or a one-line KinemaError for a file that is missing, not a video
    or has no video stream. Cheap enough to run over a whole data set before training starts."""
    import av

    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise KinemaError(f"{path} holds no video stream")
            frames = container.streams.video[0].frames
    except av.FFmpegError as e:
        raise _unreadable(path, "video", e) from None
    return int(frames) if frames else None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a still image (PNG, JPEG, WebP ... anything FFmpeg decodes) as uint8 (H, W, 3)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "image")
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(container.streams.video[0]), None)
            image = frame.to_ndarray(format="rgb24") if frame is not None else None
    except (av.FFmpegError, IndexError) as e:
        raise _unreadable(path, "image", e) from None
    if image is None:
        raise KinemaError(f"image {path} has no picture in it")
    return image
