"""Every video replayable from its own file: the request, the model's content hash and the inputs'
hashes travel in the video's container metadata, and :func:`replay` makes the same file again.

:func:`kinema.generation.generate` writes, into each mp4 (or .mkv, .mov), one tag named
:data:`METADATA_KEY` holding a JSON object (:func:`video_metadata`), format :data:`FORMAT`::

    {
      "format": 1,                       # this schema's version
      "kinema_version": "0.1.0",         # kinema.__version__ that made the file
      "request": {...},                  # the filled-in GenerationRequest (request.checked), less NOT_RECORDED
      "model": {"name": "shapes",        # --model as given (or the default's name)
                "path": "/abs/model/dir",# the directory it resolved to
                "sha256": "<64 hex>"},   # model_sha256(): its config and weight files' content
      "device": "cpu",                   # where it ran
      "dtypes": {"transformer": "float32", ...},  # what each component computed in (pipe.dtypes)
      "threads": 2,                      # torch's intra-op threads (their count moves a CPU result's last bits)
      "fps": 16.0,
      "batch": 2, "index": 1,            # videos the request made, and which one this file holds
      "inputs": {"image": {"path": "/abs/picture.png", "sha256": "<64 hex>"}},  # image / video inputs ({} for none)
      "extra": {...}                     # the caller's own (generate(..., metadata=...)): a server's job id, an original prompt
    }

The request leaves out :data:`NOT_RECORDED`: the output path, and a prompt-extension model (the
recorded prompt is the one the video was made from). A memory budget and an offload strategy are
recorded: they change no frame, but a replay on the same machine needs them as much as the first
run did. Nothing in it depends on the time: the same request still gives the same bytes. :func:`replay`
reads the tag back, checks that the model and the inputs are the ones the video was made from (by
content), runs the request again and writes the same video with the same tag: on the same device,
dtypes and thread count the file is bit-identical.

A model's hash reads every config and weight file once: each file's sha256 is kept in a small JSON
file in the user's cache folder (``$XDG_CACHE_HOME/kinema`` or ``~/.cache/kinema``), keyed by the
file's real path and checked against its size, modification time and inode, so a 28 GB model is
hashed once, not on every video.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import KinemaError, RequestError

FORMAT = 1  # the metadata schema's version
METADATA_KEY = "kinema"  # the container tag (Matroska reads its tags back upper-case: looked up either way)
HASH_CACHE_FILE = "file-sha256.json"
HASH_CACHE_FORMAT = 1
HASH_CACHE_MAX_ENTRIES = 100_000
RACY_SECONDS = 2.0  # a file changed this recently is hashed but not cached (a change within its timestamp's tick would not show)
CHUNK = 16 << 20
# What a model's hash covers: its config and weight files (and tokenizers), not READMEs, pictures or hidden folders.
MODEL_FILE_SUFFIXES = frozenset({".json", ".safetensors", ".pth", ".pt", ".bin", ".gguf", ".ckpt", ".model"})
MODEL_FILE_NAMES = frozenset({"vocab.txt", "merges.txt"})
INPUT_KINDS = ("image", "video", "extend")  # request fields that name input files (extend: a video to continue)
# Request fields a video does not record: where it went, and a prompt-extension model (the prompt
# recorded is the one the video was made from, already extended; the caller keeps the original under "extra").
NOT_RECORDED = ("output", "prompt_extend")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ReplayNote(UserWarning):
    """A replay that ran somewhere else than the original (another device, dtype, thread count or
    kinema version): its frames may differ in the last bits."""


# ------------------------------------------------------------------------------------------------
# Content hashes
# ------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """kinema's folder in the user's cache: ``$XDG_CACHE_HOME/kinema``, else ``~/.cache/kinema``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "kinema"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class HashCache:
    """Files' sha256 by real path, valid while the file's size, mtime and inode are the same."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_dir() / HASH_CACHE_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict) and raw.get("format") == HASH_CACHE_FORMAT and isinstance(raw.get("files"), dict):
                self.entries = raw["files"]
        except (OSError, ValueError):  # none yet, unreadable or corrupt: start afresh
            pass

    def sha256(self, path: str | os.PathLike) -> str:
        """``path``'s sha256, from the cache when the file is unchanged, else read (and cached)."""
        real = os.path.realpath(path)
        st = os.stat(real)
        entry = self.entries.get(real)
        if isinstance(entry, dict) and entry.get("stamp") == _stamp(st) and isinstance(entry.get("sha256"), str) and _HEX64.fullmatch(entry["sha256"]):
            return entry["sha256"]
        digest = file_sha256(real)
        after = os.stat(real)
        if _stamp(after) == _stamp(st) and time.time() - st.st_mtime_ns / 1e9 > RACY_SECONDS:
            self.entries[real] = {"stamp": _stamp(st), "sha256": digest}
            self.dirty = True
        else:  # changed while read, or so recently that a change in the same tick would not show
            self.entries.pop(real, None)
        return digest

    def save(self) -> None:
        """Write the cache atomically if it changed, dropping files that are gone; a cache folder
        that cannot be written is no error (the hashes are read again next time)."""
        if not self.dirty:
            return
        from .checkpoints.io import write_bytes_atomically

        entries = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        if len(entries) > HASH_CACHE_MAX_ENTRIES:
            entries = dict(list(entries.items())[-HASH_CACHE_MAX_ENTRIES:])
        data = json.dumps({"format": HASH_CACHE_FORMAT, "files": entries}, indent=0).encode()
        with contextlib.suppress(OSError):
            write_bytes_atomically(self.path, data)
        self.dirty = False


def model_files(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """A model directory's config and weight files (and tokenizer files) as sorted (relative name,
    path) pairs: every file under ``root`` (links followed) whose suffix is one of
    :data:`MODEL_FILE_SUFFIXES`, outside hidden folders."""
    root = Path(root)
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not (Path(name).suffix.lower() in MODEL_FILE_SUFFIXES or name in MODEL_FILE_NAMES):
                continue
            path = Path(folder) / name
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def model_sha256(root: str | os.PathLike, cache: HashCache | None = None) -> str:
    """The content hash of a model directory: the sha256 of its sorted (relative name, file
    sha256) pairs (:func:`model_files`), each file's hash cached (:class:`HashCache`)."""
    root = Path(root)
    own = cache is None
    cache = cache if cache is not None else HashCache()
    lines = []
    try:
        for name, path in model_files(root):
            lines.append(f"{name}\t{cache.sha256(path)}\n")
    except OSError as e:
        raise KinemaError(f"cannot read the model's files to hash them: {e.strerror or e} ({e.filename or root})") from None
    finally:
        if own:
            cache.save()
    if not lines:
        raise KinemaError(f"{root} holds no config or weight files to hash")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def input_records(request: Any) -> dict[str, dict[str, str]]:
    """A request's image or video input as ``{kind: {"path": absolute path, "sha256": hex}}``."""
    records = {}
    for kind in INPUT_KINDS:
        value = getattr(request, kind, None)
        if value is None:
            continue
        path = os.path.abspath(value)
        try:
            records[kind] = {"path": path, "sha256": file_sha256(path)}
        except OSError as e:
            raise KinemaError(f"cannot read {kind} {value}: {e.strerror or e}") from None
    return records


# ------------------------------------------------------------------------------------------------
# The metadata
# ------------------------------------------------------------------------------------------------
def check_extra(extra: Any) -> dict[str, Any]:
    """``generate``'s ``metadata=``: None or a JSON-able mapping with string keys (one-line errors)."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise KinemaError(f"metadata must be a mapping with string keys; got {type(extra).__name__}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise KinemaError(f"metadata must be JSON-able (strings, finite numbers, booleans, None, lists, mappings): {e}") from None
    return json.loads(json.dumps(extra))  # a copy, as JSON has it (tuples as lists)


def video_metadata(
    request: Any,
    *,
    model_name: str,
    model_path: str | os.PathLike,
    model_sha256: str,
    device: Any,
    dtypes: Mapping[str, str],
    threads: int,
    fps: float,
    batch: int,
    index: int,
    inputs: Mapping[str, Mapping[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata one video file carries (schema: this module's docstring)."""
    from . import __version__
    from .schema import dataclass_to_dict

    recorded = {k: v for k, v in dataclass_to_dict(request).items() if k not in NOT_RECORDED}
    return {
        "format": FORMAT,
        "kinema_version": __version__,
        "request": recorded,
        "model": {"name": str(model_name), "path": os.fspath(model_path), "sha256": model_sha256},
        "device": str(device),
        "dtypes": dict(dtypes),
        "threads": int(threads),
        "fps": float(fps),
        "batch": int(batch),
        "index": int(index),
        "inputs": {k: dict(v) for k, v in (inputs or {}).items()},
        "extra": dict(extra or {}),
    }


def metadata_text(metadata: Mapping[str, Any]) -> str:
    """The tag's text: compact JSON, ASCII only (every container keeps it as written)."""
    return json.dumps(metadata, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def video_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The container tags for :func:`~kinema.video.write_video`'s ``metadata=``."""
    return {METADATA_KEY: metadata_text(metadata)}


def read_metadata_text(path: str | os.PathLike) -> str:
    """The kinema tag of a video file, as written; one-line errors for a file that is missing, not a
    video, or carries no kinema tag."""
    import av

    from .video import ffmpeg_reason, missing_file

    path = Path(path)
    if not path.is_file():
        raise missing_file(path, "video")
    try:
        with av.open(str(path)) as container:
            tags = dict(container.metadata)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise KinemaError(f"{path} is not a video file kinema can read: {ffmpeg_reason(e)}") from None
    text = next((v for k, v in tags.items() if k.lower() == METADATA_KEY), None)
    if text is None:
        raise KinemaError(f"{path} carries no kinema metadata (a video kinema generate wrote has it; this one was made otherwise or re-encoded)")
    return text


def parse_metadata(text: str, where: Any = "video") -> dict[str, Any]:
    """The tag's JSON, its schema checked (one-line errors naming ``where``)."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise KinemaError(f"{where}: its kinema metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise KinemaError(f"{where}: its kinema metadata is not a JSON object")
    version = meta.get("format")
    if version != FORMAT:
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
            raise KinemaError(f"{where}: its kinema metadata is format {version}, from a newer kinema; this one reads format {FORMAT}")
        raise KinemaError(f"{where}: its kinema metadata has no known format (format {version!r}; expected {FORMAT})")

    def bad(field: str, what: str) -> KinemaError:
        return KinemaError(f"{where}: its kinema metadata is malformed: {field} must be {what}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("kinema_version", "device"):
        if not isinstance(meta.get(key), str):
            raise bad(key, "a string")
    for key in ("request", "model", "dtypes", "inputs", "extra"):
        if not isinstance(meta.get(key), dict):
            raise bad(key, "an object")
    model = meta["model"]
    for key in ("name", "path"):
        if not isinstance(model.get(key), str) or not model[key]:
            raise bad(f"model.{key}", "a non-empty string")
    if not isinstance(model.get("sha256"), str) or not _HEX64.fullmatch(model["sha256"]):
        raise bad("model.sha256", "64 hex digits")
    if not is_int(meta.get("threads")) or meta["threads"] < 1:
        raise bad("threads", "a positive integer")
    if not is_int(meta.get("batch")) or meta["batch"] < 1:
        raise bad("batch", "a positive integer")
    if not is_int(meta.get("index")) or not 0 <= meta["index"] < meta["batch"]:
        raise bad("index", f"an integer from 0 to {meta['batch'] - 1}")
    fps = meta.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise bad("fps", "a positive number")
    for kind, record in meta["inputs"].items():
        if kind not in INPUT_KINDS:
            raise bad("inputs", f"keyed by {' or '.join(INPUT_KINDS)}; got {kind!r}")
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not _HEX64.fullmatch(str(record.get("sha256"))):
            raise bad(f"inputs.{kind}", "an object with a path and a sha256")
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The kinema metadata of a video file (schema: this module's docstring); one-line KinemaErrors
    for a missing file, a file that is not a video, a video without kinema metadata, or metadata
    that is not valid JSON or not this schema."""
    return parse_metadata(read_metadata_text(path), path)


# ------------------------------------------------------------------------------------------------
# Replay
# ------------------------------------------------------------------------------------------------
def _short(sha: str) -> str:
    return sha[:12]


def default_output(path: str | os.PathLike) -> Path:
    """Where a replay goes by default: ``<stem>-replay<suffix>`` beside the video."""
    path = Path(path)
    return path.with_name(f"{path.stem}-replay{path.suffix}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _model_for(meta: dict[str, Any], model: str | os.PathLike | None, where: Path) -> Any:
    """The layout to replay with: ``model`` if given, else the recorded directory if it is still
    there, else the recorded name (a shipped model's name resolves in this install)."""
    from .checkpoints.layouts import resolve_model

    if model is not None:
        return resolve_model(model)
    recorded = meta["model"]
    if Path(recorded["path"]).is_dir():
        return resolve_model(recorded["path"])
    try:
        return resolve_model(recorded["name"])
    except KinemaError:
        raise KinemaError(
            f"the model {where} was made with is no longer at {recorded['path']}; pass --model PATH (the same weights, "
            f"sha256 {_short(recorded['sha256'])}) where it is now"
        ) from None


def check_model(meta: dict[str, Any], root: Path, where: Any = "the video") -> None:
    """Refuse, in one line, a model whose content hash is not the recorded one."""
    now, then = model_sha256(root), meta["model"]["sha256"]
    if now != then:
        raise KinemaError(
            f"the model's weights differ from the ones {where} was made with: {root} is sha256 {_short(now)}, "
            f"the video's model was {_short(then)}; pass --model PATH with the original model"
        )


def check_inputs(meta: dict[str, Any]) -> None:
    """Refuse, in one line, an input image or video that is gone or changed since the video was made."""
    for kind, record in meta["inputs"].items():
        path = Path(record["path"])
        if not path.is_file():
            raise KinemaError(f"the input {kind} the video was made from is gone: {path} (sha256 {_short(record['sha256'])})")
        try:
            now = file_sha256(path)
        except OSError as e:
            raise KinemaError(f"cannot read the input {kind} {path}: {e.strerror or e}") from None
        if now != record["sha256"]:
            raise KinemaError(
                f"the input {kind} {path} changed since the video was made: sha256 {_short(now)} now, {_short(record['sha256'])} then"
            )


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def replay(
    path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str | None = None,
    progress_bar: bool = True,
    *,
    threads: int | None = None,
    callback: Any = None,
) -> Path:
    """Make the video at ``path`` again from its own metadata; returns the file written.

    Args:
        path: a video kinema wrote (:func:`read_metadata`).
        output: where the replay goes (default :func:`default_output`, ``<stem>-replay.mp4``
            beside it); never the video itself.
        model: the model directory (or shipped model's name) to use instead of the recorded one,
            e.g. where it lives now; its content must still hash to the recorded sha256.
        device: run on this device instead of the recorded one.
        progress_bar: show progress bars on stderr.
        threads: torch's CPU threads for the run (default: the recorded count; restored after).
        callback: ``fn(Progress)``, as :func:`~kinema.generation.generate` takes it.

    Runs the recorded request with :func:`~kinema.generation.generate` (``write=False``) and writes
    the frames of the recorded batch index with the recorded metadata: on the same device, dtypes
    and thread count the file is the original's, byte for byte. Where any of those (or kinema's
    version) differ, a :class:`ReplayNote` warning says so.

    Raises:
        KinemaError: in one line, before any weights load: the file has no (valid) kinema metadata,
        the output is the video itself, the model's or an input's content changed or is gone.
    """
    from .checkpoints.io import check_output_path
    from .generation import generate
    from .request import GenerationRequest
    from .video import CONTAINER_FORMATS, write_video

    source = Path(path)
    text = read_metadata_text(source)
    meta = parse_metadata(text, source)
    out = Path(output) if output is not None else default_output(source)
    if out.suffix.lower() not in CONTAINER_FORMATS:
        raise KinemaError(f"output must end in .mp4 (or .mkv, .mov); got {out.name!r}")
    if _same_file(out, source):
        raise KinemaError(f"the output {out} is the video being replayed; give another --output")
    check_output_path(out)
    layout = _model_for(meta, model, source)
    check_model(meta, layout.root, source)
    check_inputs(meta)
    fields = {**meta["request"], "model": str(layout.root), "output": None, "device": device if device is not None else meta["device"]}
    for kind, record in meta["inputs"].items():
        fields[kind] = record["path"]
    try:
        request = GenerationRequest.from_json(fields)
    except RequestError as e:
        raise KinemaError(f"{source}: its recorded request: {e.render()}") from None
    with _threads(threads if threads is not None else meta["threads"]):
        try:
            done = generate(request, write=False, progress_bar=progress_bar, callback=callback, metadata=meta["extra"])
        except RequestError as e:
            raise KinemaError(f"{source}: its recorded request: {e.render()}") from None
    frames = done.output.frames
    index = meta["index"]
    if len(frames) != meta["batch"]:
        raise KinemaError(f"{source}: the request made {len(frames)} videos on replay; the video is number {index + 1} of {meta['batch']}")
    now = done.metadata[index] if done.metadata else {}
    for key, what in (("device", "device"), ("dtypes", "dtypes"), ("threads", "CPU threads"), ("fps", "frame rate"), ("kinema_version", "kinema version")):
        if key in now and now[key] != meta[key]:
            warnings.warn(
                f"replayed with {what} {now[key]} (the video was made with {meta[key]}): the frames may differ",
                ReplayNote,
                stacklevel=2,
            )
    write_video(frames[index], out, fps=meta["fps"], metadata={METADATA_KEY: text})
    return out
