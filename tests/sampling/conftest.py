"""Fixtures of the sampling tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def diffusers():
    """The diffusers package, for the tests that compare with it: they skip where it is not
    installed, and the exact-answer tests beside them still run."""
    return pytest.importorskip("diffusers")
