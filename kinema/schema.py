"""Config values, checked: one strict, table-driven reader for every config kinema reads.

Every format kinema reads is a mapping of settings: diffusers' ``config.json`` and
``scheduler_config.json``, the original Wan and LTX-Video configs, kinema's own ``config.json`` and
model card, training YAML. Each is read one of two ways, with the same rules:

- :func:`read_table` against a table of :class:`Key` rows, for external formats: every key the
  format may hold has a row saying its default, and whether kinema reads it (under its own name,
  through a check), needs one value (anything else would compute something else), or ignores it
  (a run-time flag that changes nothing). A key without a row is refused: a setting kinema does not
  know could change the result silently.
- :func:`read_dataclass` for kinema's own configs: the table is the dataclass itself; each value is
  checked against the field's type hint (an int is not a bool, a number is finite, a ``tuple[int,
  int]`` has two entries, ...) and against a range in the field's metadata (:func:`check`).

Every problem is one line naming the setting, raised as the caller's error class
(:class:`~kinema.errors.CheckpointError` for files, :class:`~kinema.errors.KinemaError` for
arguments); nothing deeper down ever surfaces as a TypeError or a traceback.

The field checks that configs run in ``__post_init__`` (:func:`check_ints`, :func:`check_numbers`,
...) live here too, so that a value is judged by the same words wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, TypeVar, Union

from .errors import CheckpointError, KinemaError

C = TypeVar("C")


# ------------------------------------------------------------------------------------------------
# Single values
# ------------------------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a size here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number (not a bool) that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


class Range(NamedTuple):
    """A range of numbers: its description in messages and its membership test."""

    words: str
    test: Callable[[float], bool]


POSITIVE = Range("> 0", lambda v: v > 0)
NON_NEGATIVE = Range(">= 0", lambda v: v >= 0)
OPEN_UNIT = Range("in (0, 1)", lambda v: 0 < v < 1)
UNIT = Range("in [0, 1]", lambda v: 0 <= v <= 1)
UNIT_BELOW_ONE = Range("in [0, 1)", lambda v: 0 <= v < 1)
AT_LEAST_ONE = Range(">= 1", lambda v: v >= 1)


def check_ints(owner: str, config: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise KinemaError unless each field in ``names`` is an integer >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not is_int(value) or value < minimum:
            raise KinemaError(f"{owner} {name} must be an integer >= {minimum}; got {value!r}")


def check_numbers(owner: str, config: Any, ranges: Mapping[str, Range]) -> None:
    """Raise KinemaError unless each field (name -> :class:`Range`) is a finite number in its range."""
    for name, rng in ranges.items():
        value = getattr(config, name)
        if not is_finite_number(value) or not rng.test(value):
            raise KinemaError(f"{owner} {name} must be a number {rng.words}; got {value!r}")


def check_bools(owner: str, config: Any, names: tuple[str, ...]) -> None:
    """Raise KinemaError unless each field in ``names`` is true or false."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool):
            raise KinemaError(f"{owner} {name} must be true or false; got {value!r}")


def int_tuple(owner: str, name: str, value: Any, minimum: int = 1, length: int | None = None) -> tuple[int, ...]:
    """``value`` (a list or tuple of integers >= ``minimum``, ``length`` of them if given) as a tuple."""
    if (
        not isinstance(value, (list, tuple))
        or not all(is_int(v) and v >= minimum for v in value)
        or (length is not None and len(value) != length)
    ):
        count = f"{length} " if length is not None else ""
        raise KinemaError(f"{owner} {name} must be a list of {count}integers >= {minimum}; got {value!r}")
    return tuple(value)


def bool_tuple(owner: str, name: str, value: Any) -> tuple[bool, ...]:
    """``value`` (a list or tuple of true/false flags) as a tuple."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, bool) for v in value):
        raise KinemaError(f"{owner} {name} must be a list of true/false flags; got {value!r}")
    return tuple(value)


def check(rng: Range | Callable[[Any], bool], words: str | None = None) -> dict[str, Any]:
    """Field metadata for :func:`read_dataclass`: the value must lie in ``rng`` (a :class:`Range`,
    or a predicate described by ``words``). ``field(default=1e-4, metadata=check(POSITIVE))``."""
    if isinstance(rng, Range):
        return {"range": rng}
    return {"range": Range(words or "valid", rng)}


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats lists and tuples alike (JSON has no tuples) and NaN as unequal."""
    norm = lambda v: tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def braces(text: str) -> str:
    """``text`` safe inside a :class:`~kinema.errors.RequestError` template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def quoted(value: Any, limit: int = 80) -> str:
    """:func:`short`, safe inside a :class:`~kinema.errors.RequestError` template."""
    return braces(short(value, limit))


# ------------------------------------------------------------------------------------------------
# External formats: a table of keys
# ------------------------------------------------------------------------------------------------
_NO_VALUE = object()


@dataclass(frozen=True)
class Key:
    """How one key of an external config is read.

    Args:
        default: the format's own default, used when the key is absent.
        must: the one value kinema implements (any other computes something else and is refused).
        off: values that mean the same as ``must`` (diffusers tests ``shift_terminal`` for truth:
            None, 0 and 0.0 all mean "off").
        ignored: kinema does not need it and it changes nothing (a run-time flag).
        name: the name kinema's result uses (default: the key's).
        convert: checks and converts the value (raise ``ValueError`` with a short reason).
    """

    default: Any = None
    must: Any = _NO_VALUE
    off: tuple = ()
    ignored: bool = False
    name: str | None = None
    convert: Callable[[Any], Any] | None = None

    @property
    def read(self) -> bool:
        return not self.ignored and self.must is _NO_VALUE


def read(default: Any = None, *, name: str | None = None, convert: Callable[[Any], Any] | None = None) -> Key:
    """A key kinema reads (default ``default``; under ``name``; through ``convert``)."""
    return Key(default, name=name, convert=convert)


def must(value: Any, default: Any = _NO_VALUE, *, off: tuple = ()) -> Key:
    """A key whose one supported value is ``value`` (default: the format's ``default``, else ``value``)."""
    return Key(value if default is _NO_VALUE else default, must=value, off=off)


def ignored(default: Any = None) -> Key:
    """A key that changes nothing kinema computes."""
    return Key(default, ignored=True)


def require_mapping(config: Any, what: str, error: type[KinemaError] = CheckpointError) -> Mapping[str, Any]:
    """``config`` itself if it is a mapping (a JSON object), else a one-line ``error``."""
    if not isinstance(config, Mapping):
        raise error(f"{what} must be a mapping of settings (a JSON object); got {type(config).__name__} {short(config, 40)}")
    return config


def read_table(
    config: Any,
    table: Mapping[str, Key],
    *,
    what: str,
    error: type[KinemaError] = CheckpointError,
    hint: str = "",
    unknown_keys: str = "refuse",
) -> dict[str, Any]:
    """Read ``config`` by ``table``: the values of the keys kinema reads (under their names).

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are metadata and skipped.
    Raises ``error`` for a non-mapping, an unknown key, a value other than a key's ``must``, or a
    value its ``convert`` rejects; ``hint`` is appended to the messages (what to do instead).
    ``unknown_keys="ignore"`` is for a format whose own reader drops keys it does not know
    (the original LTX-Video configs, read by diffusers' ``ConfigMixin``): there such a key cannot
    change the computation.
    """
    config = require_mapping(config, what, error)
    tail = f"; {hint}" if hint else ""
    unknown = sorted(str(k) for k in config if not str(k).startswith("_") and k not in table)
    if unknown and unknown_keys == "refuse":
        raise error(f"{what} has settings kinema does not know: {unknown}{tail}")
    out: dict[str, Any] = {}
    for key, row in table.items():
        value = config.get(key, row.default)
        if row.ignored:
            continue
        if row.must is not _NO_VALUE:
            if not same_value(value, row.must) and not any(same_value(value, o) for o in row.off):
                raise error(f"{what} has {key}={short(value)}, which kinema does not implement (only {key}={row.must!r}){tail}")
            continue
        if row.convert is not None:
            try:
                value = row.convert(value)
            except (ValueError, TypeError, KinemaError) as e:
                raise error(f"{what} has {key}={short(value)}: {' '.join(str(e).split())}") from None
        elif key in config and (kind := _kind_of(row.default)) is not None and not _is_kind(value, kind):
            raise error(f"{what} has {key}={short(value)}: it must be {_NOUNS[kind][0]}, like its default {row.default!r}{tail}")
        out[row.name or key] = value
    return out


def _kind_of(default: Any) -> type | None:
    """The type a key with this default takes when its table gives no ``convert`` (None: any)."""
    for kind in (bool, int, float, str):
        if isinstance(default, kind):
            return kind
    return None


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_finite_number(value)
    return isinstance(value, kind)


# ------------------------------------------------------------------------------------------------
# kinema's own configs: the dataclass is the table
# ------------------------------------------------------------------------------------------------
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _Bad(Exception):
    """A value that does not fit a type hint: the words of what it should be."""


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false flags"), str: ("a string", "strings")}


def _describe(hint: Any, plural: bool = False) -> str:
    """Words for what a value of type ``hint`` must be ("a list of integers", "a number or null")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "anything"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        return f"a list of {len(args)} {_describe(args[0], plural=True)}" if len(set(args)) == 1 else f"a list of {len(args)} values"
    if origin is list:
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "mappings" if plural else "a mapping"
    if hint in _NOUNS:
        return _NOUNS[hint][1 if plural else 0]
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str, error: type[KinemaError]) -> Any:
    """``value`` checked (and lists made tuples) against ``hint``; raises :class:`_Bad`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, error)
            except _Bad:
                continue
        raise _Bad(_describe(hint))
    if hint is type(None):
        if value is None:
            return None
        raise _Bad("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Bad("true or false")
    if hint is int:
        if is_int(value):
            return value
        raise _Bad("an integer")
    if hint is float:
        if is_number(value) and math.isfinite(value):
            return value
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):  # YAML 1.1 reads 1e-4 as text
            raise _Bad("a finite number (YAML reads a number like 1e-4 as text: write 1.0e-4)")
        raise _Bad("a finite number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Bad("a string")
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Bad(_describe(hint))
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            raise _Bad(_describe(hint))
        items = args[:1] * len(value) if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args
        try:
            out = [_coerce(v, a, where, error) for v, a in zip(value, items)] if args else list(value)
        except _Bad:
            raise _Bad(_describe(hint)) from None
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _Bad("a mapping")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return read_dataclass(hint, value, what=where, error=error)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Bad(_describe(hint))
    return value


def required_fields(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` that have no default."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]


def read_dataclass(
    cls: type[C],
    raw: Any,
    *,
    what: str,
    error: type[KinemaError] = CheckpointError,
    class_name: str | None = None,
    check_types: bool = True,
    prefix: str = "",
) -> C:
    """The dataclass ``cls`` from a mapping of its fields, every value checked.

    Keys starting with ``_`` are skipped, except that ``_class_name``, when ``class_name`` is given,
    must be it. An unknown or missing field, a value of the wrong type (by the field's hint, nested
    dataclasses read the same way) or out of its range (metadata from :func:`check`), and any check
    of ``__post_init__`` raise one line of ``error``; a field's metadata ``words`` says what it must
    be in place of the type's words. ``check_types=False`` leaves the values to ``__post_init__``
    (model configs, which check every field themselves and say so in the same words whether built
    in code or read from a file). Messages name a field as ``prefix`` + its name (``optim.lr``).
    """
    raw = require_mapping(raw, what, error)
    if class_name is not None:
        name = raw.get("_class_name", class_name)
        if name != class_name:
            raise error(f"{what}: expected a {class_name} config; got _class_name {name!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in raw if not str(k).startswith("_") and k not in fields)
    if unknown:
        raise error(f"unknown key(s) {unknown} in {what}; known keys: {sorted(fields)}")
    missing = [n for n in required_fields(cls) if n not in raw]
    if missing:
        raise error(f"{what} lacks required field(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if name not in fields:
            continue
        if not check_types:
            values[name] = value
            continue
        meta, hint = fields[name].metadata, hints.get(name, Any)
        label = f"{prefix}{name}"
        try:
            if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
                value = read_dataclass(hint, value, what=label, error=error, prefix=f"{label}.")
            else:
                value = _coerce(value, hint, label, error)
        except _Bad as e:
            raise error(f"{label} must be {meta.get('words', e)}; got {short(value)}") from None
        rng = meta.get("range")
        if rng is not None and value is not None:
            ok = False
            try:
                ok = all(rng.test(v) for v in value) if isinstance(value, (tuple, list)) else rng.test(value)
            except TypeError:
                pass
            if not ok:
                raise error(f"{label} must be {meta.get('words', rng.words)}; got {short(value)}")
        values[name] = value
    try:
        return cls(**values)
    except (KinemaError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:  # a __post_init__ check
        message = " ".join(str(e).split())
        if isinstance(e, error):
            raise
        raise error(f"bad {what}: {message}") from None


def dataclass_to_dict(config: Any, class_name: str | None = None) -> dict[str, Any]:
    """The JSON form of a config dataclass: every field (tuples as lists), ``_class_name`` first if given."""
    fields = {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()}
    return {"_class_name": class_name, **fields} if class_name else fields


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
