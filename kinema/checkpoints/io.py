"""Reading and writing weights safely, and filling models built on the meta device.

- ``.safetensors`` files are memory-mapped (``safetensors.safe_open``): nothing is copied until a
  tensor is used, and a truncated or corrupt file raises :class:`CheckpointError` in one line.
- ``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)`` only; a file that
  would need to unpickle code is refused with a one-line error.
- Models are built on the meta device and filled with ``load_state_dict(strict=True,
  assign=True)``; missing or unexpected keys raise an error that names them.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import pickle
import re
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from .keymap import _preview

M = TypeVar("M", bound=torch.nn.Module)
C = TypeVar("C")

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Memory-map one safetensors file into a dict of tensors (views into the mapped file on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # header or size mismatch
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {_one_line(e)}"
        ) from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty dict when there is none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {_one_line(e)}") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, read from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {_one_line(e)}") from None


def load_pickle_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` state dict with ``torch.load(weights_only=True)``: tensors only, no code.

    Accepts the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ``{"module": ...}``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs to unpickle code to load, which kinema refuses for safety; "
            f"convert it to safetensors with the tool that made it ({_one_line(e)[:120]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch weights file (truncated or corrupt?): {_one_line(e)}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load one weights file by its suffix: safetensors (memory-mapped) or ``.pth`` (weights only)."""
    suffix = Path(path).suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return load_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return load_pickle_weights(path)
    raise CheckpointError(f"unknown weights file type {suffix!r} for {path}: expected .safetensors or .pth")


def load_sharded_safetensors(directory: str | os.PathLike, stem: str) -> dict[str, torch.Tensor]:
    """Load ``{stem}.safetensors`` or the shards named by ``{stem}.safetensors.index.json``."""
    directory = Path(directory)
    single = directory / f"{stem}.safetensors"
    if single.is_file():
        return load_safetensors(single)
    index = directory / f"{stem}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {_one_line(e)}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_safetensors(directory / shard))
        return state
    raise CheckpointError(f"no {stem}.safetensors (or sharded index) in {directory}")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON config file (an object) with a one-line error when it is missing, malformed or
    holds anything but an object (``null``, a list)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {_one_line(e)}") from None
    except OSError as e:
        raise CheckpointError(f"{path} could not be read: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object of settings; got {type(data).__name__} {json.dumps(data)[:40]}")
    return data


def config_class_name(directory: str | os.PathLike) -> str | None:
    """The ``_class_name`` of ``directory/config.json``, or None when there is no such file, it is
    not JSON, or it names no class: for asking what a directory holds without raising."""
    config = Path(directory) / "config.json"
    if not config.is_file():
        return None
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def resolve_config(stored: C | None, passed: C | None, infer: Callable[[], C] | None, *, where, what: str) -> C:
    """The one rule by which every kinema loader settles a model's architecture.

    A config stored with the weights (a ``config.json``, a single file's metadata) is the source of
    truth: a ``passed`` config must equal it, or the call raises rather than build a model the
    weights do not describe. With nothing stored, ``passed`` is used; failing that, ``infer()``
    reads the architecture off the weights' shapes (None: the format needs a stored config).
    """
    if stored is not None:
        if passed is not None and passed != stored:
            raise CheckpointError(f"{where} does not match the config passed to the {what} loader; pass none (the stored one is used)")
        return stored
    if passed is not None:
        return passed
    if infer is None:
        raise CheckpointError(f"{where}: no config stored with the {what} weights; pass config=")
    return infer()


# ------------------------------------------------------------------------------------------------
# Building and filling models
# ------------------------------------------------------------------------------------------------
def component_dir(path: Path, component: str) -> Path:
    """``path/component`` when ``path`` is a model root holding that component's folder (a
    ``config.json`` there and none at the root), else ``path``: a loader of one component also takes
    the whole model's directory."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file() and (path / component / "config.json").is_file():
        return path / component
    return path


def build_on_meta(factory: Callable[[], M]) -> M:
    """Construct a model on the meta device: no memory is allocated for its parameters."""
    with torch.device("meta"):
        return factory()


def load_into(
    model: M,
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    what: str = "model",
) -> M:
    """Fill ``model`` (usually on meta) from ``state``, strictly: every key must match.

    Args:
        model: the module to fill; parameters are replaced (``assign=True``), so a meta model works.
        state: kinema-named tensors.
        dtype: cast floating-point tensors to this dtype (None keeps each tensor's own); modules
            listed in ``model._keep_in_fp32`` (dotted prefixes; ``*`` matches one component) stay
            float32.
        device: move tensors here (None keeps them where they are, e.g. memory-mapped on CPU).
        what: a name for the error message ("Wan transformer").
    """
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        raise CheckpointError(f"{what} weights do not match the architecture; " + "; ".join(parts))
    bad_shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad_shapes:
        raise CheckpointError(f"{what} weights have the wrong shapes (config mismatch?): {_preview(bad_shapes, 4)}")
    bad_kinds = [f"{k} is {state[k].dtype}, not {v.dtype}" for k, v in expected.items() if state[k].is_floating_point() != v.is_floating_point()]
    if bad_kinds:
        raise CheckpointError(f"{what} weights have the wrong kind of numbers (integers for floats or the reverse): {_preview(bad_kinds, 4)}")
    keep_fp32 = module_pattern(getattr(model, "_keep_in_fp32", ()))
    as_is = module_pattern([name for name, m in model.named_modules() if getattr(m, "_stored_as_is", False)])  # quantised layers
    converted = {}
    mapped = None
    for k, t in state.items():
        target_dtype = None
        if t.is_floating_point() and not (as_is is not None and as_is.match(k)):
            target_dtype = torch.float32 if keep_fp32 is not None and keep_fp32.match(k) else dtype
        converted[k] = t.to(device=device if device is not None else t.device, dtype=target_dtype or t.dtype)
        if converted[k].data_ptr() != t.data_ptr() and t.device.type == "cpu":  # a copy: the file's pages are not needed
            from ..pipelines.memory import FileMappings, drop_pages

            mapped = mapped or FileMappings()
            if mapped.covers(t):
                drop_pages(t)
    model.load_state_dict(converted, strict=True, assign=True)
    # Buffers that are not saved (persistent=False) are still on meta: rebuild them in place.
    _materialize_meta_buffers(model, device)
    return model


def load_own_format(
    path: str | os.PathLike,
    read_config: Callable[[Any], C],
    build: Callable[[C], M],
    *,
    config: C | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    what: str,
    stem: str = "diffusion_pytorch_model",
) -> M:
    """A model in kinema's own format, as a training run exports it: a directory (``config.json`` and
    ``{stem}*.safetensors``) or a weights file with that config.json beside it.

    Args:
        read_config: the raw config.json -> the config (one-line errors for anything else).
        build: the config -> the module (built on the meta device, then filled strictly).
        config: if given, must equal the stored one (:func:`resolve_config`).
        dtype, device: as :func:`load_into`.
        what: the model's name in messages ("pixel DiT").

    Returns:
        The model in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        where, state = path / "config.json", load_sharded_safetensors(path, stem)
    elif path.is_file():
        where, state = path.parent / "config.json", load_weights(path)
    else:
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    config = resolve_config(read_config(read_json(where)), config, None, where=where, what=what)
    model = build_on_meta(lambda: build(config))
    return load_into(model, state, dtype=dtype, device=device, what=what).eval()


def module_pattern(prefixes: tuple[str, ...] | list[str]) -> re.Pattern[str] | None:
    """One regex for dotted module prefixes, where ``*`` stands for one component (``blocks.*.norm3``)."""
    if not prefixes:
        return None
    parts = [re.escape(p).replace(r"\*", r"[^.]+") for p in prefixes]
    return re.compile(r"^(?:" + "|".join(parts) + r")(?:\..*)?$")


def _materialize_meta_buffers(model: torch.nn.Module, device) -> None:
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        has_meta = any(b.is_meta for b in module.buffers(recurse=False))
        if has_meta:
            if reset is None:
                raise RuntimeError(f"{type(module).__name__} has meta buffers and no reset_buffers()")
            reset(device=device if device is not None else "cpu")


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    Nothing half-written is ever left at ``path``: a crash leaves the old file (or none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_path(path: str | os.PathLike, *, what: str = "output", directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written (a file, or with ``directory`` a folder
    to fill), without writing anything there: one-line KinemaError for a folder where a file should
    go (or the other way round), a parent that is a file, a name too long, a read-only file system
    or a missing permission. Returns the path."""
    from ..errors import KinemaError

    raw = os.fspath(path)
    if not raw or "\0" in raw:
        raise KinemaError(f"{what} must be a path; got {raw!r}")
    path = Path(raw)

    def kind(p: Path) -> str | None:  # "dir", "file" or None (absent); an unreadable path is refused
        try:
            return "dir" if stat.S_ISDIR(p.stat().st_mode) else "file"
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return "under-file"
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise KinemaError(f"cannot write {what} {path}: the name is too long for the file system") from None
            raise KinemaError(f"cannot write {what} {path}: {e.strerror or e} ({p})") from None

    here = kind(path)
    if directory:
        if here == "file":
            raise KinemaError(f"{what} {path} is a file; give a folder (new or existing)")
    elif here == "dir":
        raise KinemaError(f"{what} {path} is a folder; give a file name, e.g. {path / 'out.mp4'}")
    ancestor = path if directory and here == "dir" else path.parent
    missing: list[str] = [] if ancestor == path else [path.name]
    while kind(ancestor) in (None, "under-file"):
        missing.append(ancestor.name)
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if kind(ancestor) != "dir":
        raise KinemaError(f"cannot write {what} {path}: {ancestor} is a file, not a folder")
    try:
        limit = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for name in missing:
        if len(os.fsencode(name)) > limit:
            raise KinemaError(f"cannot write {what} {path}: the name {name[:40]!r}... is longer than {limit} bytes")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise KinemaError(f"cannot write {what} {path}: cannot create a file in {ancestor} ({e.strerror or e})") from None
    return path


_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400  # <fcntl.h>


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that the file appears whole or not at all, and a process killed
    at any moment (SIGKILL included) leaves nothing behind.

    On Linux the bytes go into an anonymous file (``O_TMPFILE``, reclaimed by the kernel if the
    process dies) that is then linked into place: under its own name when there is no file there
    yet, else under a temporary name renamed over the old file in the same instant. Elsewhere (or
    on a file system without ``O_TMPFILE``) it falls back to :func:`atomic_path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _anonymous_file(path.parent)
    if fd is None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o666 & ~_umask())
        if not path.exists() and _link(fd, path):
            return path
        _remove_stale_parts(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        if tmp.exists():
            tmp.unlink()
        if not _link(fd, tmp):
            raise OSError(f"could not link the new file into {path.parent}")
        os.replace(tmp, path)
        return path
    finally:
        os.close(fd)


def _remove_stale_parts(path: Path) -> None:
    """Remove ``.NAME.PID.part`` files beside ``path`` whose writer is gone: a process killed in the
    instant between linking its new file there and renaming it over the old one."""
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        pid = part.name[len(path.name) + 2 : -len(".part")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except OSError:
            pass  # alive (another user's process): leave it


def _anonymous_file(directory: Path) -> int | None:
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o600)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


def _link(fd: int, path: Path) -> bool:
    """linkat(2) the anonymous file ``fd`` to ``path``; False when the name is taken meanwhile."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    rc = libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(path), _AT_SYMLINK_FOLLOW)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    raise OSError(err, os.strerror(err), str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict to safetensors atomically (contiguous copies of shared or strided tensors)."""
    tensors = {k: v.detach().contiguous().clone() if v.data_ptr() in _shared_ptrs(state) else v.detach().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _shared_ptrs(state: Mapping[str, torch.Tensor]) -> set[int]:
    seen, shared = set(), set()
    for v in state.values():
        p = v.data_ptr()
        (shared if p in seen else seen).add(p)
    return shared


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
