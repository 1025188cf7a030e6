"""Shared fixtures. Real files come from ../shared/data (never copied into the package)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDXLIVE_SHARED_DATA", REPO.parent / "shared" / "data"))

# UMAP's numba code compiles once per machine when this cache is writable (see SCIENCE.md).
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}; set EDXLIVE_SHARED_DATA")
    return SHARED_DATA
