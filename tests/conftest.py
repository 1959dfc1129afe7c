"""Shared fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sicap_fixture import write_sicap  # noqa: E402


@pytest.fixture
def sicap(tmp_path) -> Path:
    """A tiny SICAPv2-layout folder (see sicap_fixture.SLIDES)."""
    return write_sicap(tmp_path / "SICAPv2")


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and two OpenMP threads on a busy 2-core machine can be
    100x slower than one. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
