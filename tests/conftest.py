"""Test fixtures: ``xp`` runs a test on every available array module (NumPy; CuPy with a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `from helpers import ...`

from bioplaus.backend import gpu_available


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA device")


def _array_modules():
    params = [pytest.param(np, id="numpy")]
    if gpu_available():
        import cupy

        params.append(pytest.param(cupy, id="cupy", marks=pytest.mark.gpu))
    else:
        params.append(pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(reason="no GPU")]))
    return params


@pytest.fixture(params=_array_modules())
def xp(request):
    """The array module under test."""
    return request.param
