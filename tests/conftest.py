"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sicap_fixture import write_sicap  # noqa: E402


@pytest.fixture
def sicap(tmp_path) -> Path:
    """A tiny SICAPv2-layout folder (see sicap_fixture.SLIDES)."""
    return write_sicap(tmp_path / "SICAPv2")
