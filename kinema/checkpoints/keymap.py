"""Key maps between kinema's parameter names and an external checkpoint format.

A key map is data: an ordered list of ``(ours, theirs)`` template pairs. A template is a
state-dict key in which ``{name}`` placeholders stand for parts that carry over unchanged:

- ``{leaf}``, ``{leaf2}``...: one dotted component of letters, digits and underscores
  (``weight``, ``bias``, ``gamma``);
- ``{path}``, ``{path2}``...: one or more dotted components (``blocks.3.ffn``);
- any other name (``{i}``, ``{block}``): a run of digits.

The same list is used in both directions (:meth:`KeyMap.to_ours` and :meth:`KeyMap.to_theirs`),
the first rule that matches a key wins, and a key that no rule matches raises an error that
names it. Templates with computed indices (a flat list in one format, nested blocks in the other)
are written out as concrete pairs by a small function of the model config that returns the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, TypeVar

from ..errors import CheckpointError

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _regex_for(name: str) -> str:
    if name.startswith("leaf"):
        return r"[A-Za-z0-9_]+"
    if name.startswith("path"):
        return r"[A-Za-z0-9_.]+"
    return r"\d+"


def _compile(template: str) -> re.Pattern[str]:
    """Turn ``blocks.{i}.self_attn.q.{leaf}`` into an anchored regex with named groups."""
    out, pos, seen = [], 0, set()
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        name = m.group(1)
        if name in seen:
            raise ValueError(f"placeholder {{{name}}} used twice in key template {template!r}")
        seen.add(name)
        out.append(f"(?P<{name}>{_regex_for(name)})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def _names(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


@dataclass
class KeyMap:
    """An ordered, bidirectional list of key templates between kinema and one external format.

    Args:
        name: the external format's name, used in error messages ("diffusers", "wan-original").
        rules: ``(ours, theirs)`` template pairs; both sides must use the same placeholders.
    """

    name: str
    rules: list[tuple[str, str]]
    _fwd: list[tuple[re.Pattern[str], str]] = field(init=False, repr=False)
    _bwd: list[tuple[re.Pattern[str], str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for ours, theirs in self.rules:
            if _names(ours) != _names(theirs):
                raise ValueError(f"key map {self.name}: placeholders differ in {ours!r} <-> {theirs!r}")
        self._fwd = [(_compile(theirs), ours) for ours, theirs in self.rules]
        self._bwd = [(_compile(ours), theirs) for ours, theirs in self.rules]

    # -- single keys ---------------------------------------------------------------------------
    @staticmethod
    def _apply(table: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
        for pattern, target in table:
            m = pattern.match(key)
            if m is not None:
                return target.format(**m.groupdict())
        return None

    def our_key(self, their_key: str) -> str | None:
        """kinema's name for an external key, or None when no rule matches."""
        return self._apply(self._fwd, their_key)

    def their_key(self, our_key: str) -> str | None:
        """The external name for one of kinema's keys, or None when no rule matches."""
        return self._apply(self._bwd, our_key)

    # -- whole state dicts ---------------------------------------------------------------------
    def _convert(self, state: Mapping[str, T], table, direction: str) -> dict[str, T]:
        out: dict[str, T] = {}
        unknown: list[str] = []
        for key, value in state.items():
            new = self._apply(table, key)
            if new is None:
                unknown.append(key)
                continue
            if new in out:
                raise CheckpointError(f"{self.name} key map sends two keys to {new!r} ({direction})")
            out[new] = value
        if unknown:
            raise CheckpointError(
                f"{len(unknown)} key(s) not known to the {self.name} key map ({direction}): "
                f"{_preview(unknown)}"
            )
        return out

    def to_ours(self, state: Mapping[str, T]) -> dict[str, T]:
        """Rename an external state dict to kinema's names; unknown keys raise CheckpointError."""
        return self._convert(state, self._fwd, f"{self.name} -> kinema")

    def to_theirs(self, state: Mapping[str, T]) -> dict[str, T]:
        """Rename a kinema state dict to the external names; unknown keys raise CheckpointError."""
        return self._convert(state, self._bwd, f"kinema -> {self.name}")


def _preview(keys: Iterable[str], limit: int = 6) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
