"""Shared mechanics of kinema's own model configs (:class:`~kinema.models.token_ar.TokenARConfig`,
:class:`~kinema.models.vae.vq_video.VQVideoConfig`): field checks for ``__post_init__`` and the
``config.json`` round trip (``_class_name`` plus every field, tuples as lists).

A bad value raises a one-line :class:`KinemaError` from the checks (constructing a config) or a
:class:`CheckpointError` from :func:`config_from_dict` (reading a ``config.json``), never a
TypeError or ZeroDivisionError from deeper down.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, TypeVar

from ..errors import CheckpointError, KinemaError

C = TypeVar("C")


# ------------------------------------------------------------------------------------------------
# Field checks
# ------------------------------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an int to Python, never a size here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ints(owner: str, config: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise KinemaError unless each field in ``names`` is an integer >= ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if not is_int(value) or value < minimum:
            raise KinemaError(f"{owner} {name} must be an integer >= {minimum}; got {value!r}")


class Range(NamedTuple):
    """A range of numbers: its description in messages and its membership test."""

    words: str
    test: Callable[[float], bool]


POSITIVE = Range("> 0", lambda v: v > 0)
NON_NEGATIVE = Range(">= 0", lambda v: v >= 0)
OPEN_UNIT = Range("in (0, 1)", lambda v: 0 < v < 1)
UNIT_BELOW_ONE = Range("in [0, 1)", lambda v: 0 <= v < 1)


def check_numbers(owner: str, config: Any, ranges: Mapping[str, Range]) -> None:
    """Raise KinemaError unless each field (name -> :class:`Range`) is a number (int or float) in its range."""
    for name, rng in ranges.items():
        value = getattr(config, name)
        if not is_number(value) or not rng.test(value):
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


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------
def config_to_dict(config: Any, class_name: str) -> dict[str, Any]:
    """``config.json`` content of a config dataclass: ``_class_name`` and every field (tuples as lists)."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return {"_class_name": class_name, **fields}


def config_from_dict(cls: type[C], raw: Any, class_name: str) -> C:
    """The config dataclass ``cls`` from :func:`config_to_dict`'s form (keys starting with ``_`` are
    ignored). Another ``_class_name``, an unknown or missing field, or a bad value raise a one-line
    :class:`CheckpointError`."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"a {class_name} config must be a mapping of fields; got {type(raw).__name__}")
    name = raw.get("_class_name", class_name)
    if name != class_name:
        raise CheckpointError(f"expected a {class_name} config; got _class_name {name!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in fields)
    if unknown:
        raise CheckpointError(f"unknown {class_name} config field(s) {unknown} (kinema does not implement them); known: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CheckpointError(f"{class_name} config is incomplete: it lacks required field(s) {missing}")
    try:
        return cls(**{k: v for k, v in raw.items() if k in fields})
    except CheckpointError:
        raise
    except (KinemaError, TypeError, ValueError) as e:  # KinemaError: a check of __post_init__
        raise CheckpointError(f"bad {class_name} config: {' '.join(str(e).split())}") from None
