"""Shared fixtures. Tests that need the real dataset skip, with the reason, where it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "fer-gimefive"


@pytest.fixture(scope="session")
def fer_data() -> Path:
    if not (SHARED_DATA / "train_labels.csv").is_file():
        pytest.skip(f"real dataset not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def astronaut_bgr() -> np.ndarray:
    """A real 512x512 photo with exactly one face (scikit-image ships it offline)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])
