"""Test fixtures: ``xp`` runs a test on every array module (NumPy; CuPy with a GPU) and once more on
NumPy taking the GPU's code paths, so a branch chosen by array module is tested on every machine.

``BIOPLAUS_REQUIRE_GPU=1`` (the GPU check script sets it): a machine without a working GPU fails
the run at once, with the reason, instead of skipping every GPU test (a broken GPU must not look
like a pass).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `from helpers import ...`

from bioplaus import backend
from bioplaus.backend import device_paths_on_cpu, gpu_available

REQUIRE_GPU = os.environ.get("BIOPLAUS_REQUIRE_GPU", "") not in ("", "0")
# tests/test_quickstart.py runs the README's test command in a fresh environment; there the end-to-end
# tests marked slow (whole runs in subprocesses, MPI, notebooks), which the outer run of the same
# suite has just run with the same code, are skipped to keep CI's time in bounds
QUICKSTART_INNER = os.environ.get("BIOPLAUS_QUICKSTART_INNER") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA device")


def pytest_sessionstart(session):
    if REQUIRE_GPU and not gpu_available():
        pytest.exit(f"BIOPLAUS_REQUIRE_GPU is set but no GPU is usable: {backend._cupy_error}", returncode=3)


def pytest_collection_modifyitems(config, items):
    if QUICKSTART_INNER:
        skip = pytest.mark.skip(reason="end-to-end: run by the outer suite (tests/test_quickstart.py's inner run)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def _array_modules():
    params = [pytest.param(np, id="numpy"), pytest.param("device-paths", id="numpy-device-paths")]
    if gpu_available():
        import cupy

        params.append(pytest.param(cupy, id="cupy", marks=pytest.mark.gpu))
    else:
        params.append(pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(reason="no GPU")]))
    return params


@pytest.fixture(params=_array_modules())
def xp(request):
    """The array module under test ("numpy-device-paths": NumPy on the GPU's code paths)."""
    if request.param == "device-paths":
        with device_paths_on_cpu():
            yield np
        return
    yield request.param
