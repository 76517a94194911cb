"""Shared fixtures. Heavy fixtures are session-scoped so the suite builds each dataset once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch from oversubscribing the CI machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from tests.toydata import make_toy_mvtec  # noqa: E402


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout dataset with masks: two categories, easy bright-spot anomalies."""
    return make_toy_mvtec(tmp_path_factory.mktemp("toy"), categories=("disc", "ring"), size=64)
