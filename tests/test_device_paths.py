"""The GPU's code paths, whole training steps, on the CPU (NumPy under ``device_paths_on_cpu``).

Ops are checked on those paths one by one (the ``xp`` fixture's ``numpy-device-paths``); here every
variant's step on a small mlp and a small vgg runs on them and must agree with the CPU paths to
float32 rounding, as a GPU run must (``test_gpu.py``, the same comparisons). The paths differ in how
they compute, not what: fused element-wise passes, unchunked buffers, and every 3x3 convolution by
Winograd's F(4x4, 3x3) ("auto" on a device); the CPU's reference here is im2col, the exact one.
"""

from __future__ import annotations

import numpy as np
import parity
import pytest

from bioplaus.backend import NUMPY, device_paths_on_cpu
from bioplaus.ops import winograd
from bioplaus.rules import VARIANTS


@pytest.fixture
def winograd_calls(monkeypatch):
    """Counts the convolutions that ran by Winograd (forward and backward)."""
    calls = {"forward": 0, "backward": 0}
    for name, real in (("forward", winograd.winograd_conv3x3_forward), ("backward", winograd.winograd_conv3x3_backward)):
        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(winograd, f"winograd_conv3x3_{name}", counted)
    return calls


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_on_device_paths_agrees_with_cpu_paths(variant, kind, winograd_calls):
    with device_paths_on_cpu():
        ours = parity.step(NUMPY, variant, kind)
    if kind == "conv":  # vgg6b's four 3x3 convs (and a learned sim head's) ran by Winograd, both ways
        assert winograd_calls["forward"] >= 4 and winograd_calls["backward"] >= 4, winograd_calls
    else:
        assert winograd_calls == {"forward": 0, "backward": 0}
    calls_on_device_paths = dict(winograd_calls)
    ref = parity.step(NUMPY, variant, kind, conv_algorithm="im2col")
    assert winograd_calls == calls_on_device_paths  # the reference ran by im2col
    parity.assert_steps_agree(ours, ref, np, (variant, kind))


@pytest.mark.parametrize("kind", ["resnet", "wrn", "wrn-a"])
@pytest.mark.parametrize("variant", parity.RESIDUAL_VARIANTS)
def test_a_residual_step_on_device_paths_agrees_with_cpu_paths(variant, kind):
    """ResNet's and Wide ResNet's blocks (their shortcuts, pre-activations, tails) on the GPU's paths: with
    im2col as close as the CPU paths (the fused element-wise passes, unchunked buffers); with Winograd within
    parity.RESIDUAL_STEP_TOL (float32 rounding near φ's kink; the blocks agree to 1e-10 in float64)."""
    with device_paths_on_cpu():
        im2col = parity.step(NUMPY, variant, kind, conv_algorithm="im2col")
        wino = parity.step(NUMPY, variant, kind)
    parity.assert_steps_agree(im2col, parity.step(NUMPY, variant, kind, conv_algorithm="im2col"), np, (variant, kind))
    parity.assert_steps_agree(wino, parity.step(NUMPY, variant, kind), np, (variant, kind), parity.RESIDUAL_STEP_TOL)


@pytest.mark.parametrize("kind", ["mlp", "conv", "resnet", "wrn"])
@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_evaluation_on_device_paths_agrees_with_cpu_paths(variant, kind):
    with device_paths_on_cpu():
        ours = parity.evaluation(NUMPY, variant, kind)
    parity.assert_evaluations_agree(ours, parity.evaluation(NUMPY, variant, kind))


def test_device_paths_with_im2col_are_the_cpu_paths_for_convolutions():
    """With ``--conv-algorithm im2col``, a conv net's step on the device paths differs from the CPU's
    only by the unblocked element-wise passes: closer than with Winograd, which has its own rounding."""
    with device_paths_on_cpu():
        wino = parity.step(NUMPY, "predsim", "conv")
        im2col = parity.step(NUMPY, "predsim", "conv", conv_algorithm="im2col")
    ref = parity.step(NUMPY, "predsim", "conv", conv_algorithm="im2col")
    parity.assert_steps_agree(im2col, ref, np, ("im2col",))
    err = {name: max(float(np.abs(g[k] - ref[0][i][k]).max()) for i, g in run[0].items() for k in g)
           for name, run in (("winograd", wino), ("im2col", im2col))}
    assert 0 < err["im2col"] < err["winograd"], err
