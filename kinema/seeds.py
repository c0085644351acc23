"""Seeds from explicit parts: every random draw kinema makes outside a user's generator comes from a
``torch.Generator`` seeded by :func:`derive_seed` of a tuple that names the draw, so it is the same
in every process and does not depend on what ran before it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes and runs)."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
