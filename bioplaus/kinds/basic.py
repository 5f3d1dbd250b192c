"""ResNet's blocks (Nøkland & Eidnes' ``BasicBlock`` and their ResNet's first convolution), post-activation
layers of :mod:`bioplaus.kinds.layered`: 3x3 convolutions without bias -> BN -> φ -> channel dropout.

``basic``: conv1 (3x3, the block's stride) and conv2 (3x3), each with its own tap; the shortcut joins
conv2's BN before φ: the identity, or a 1x1 convolution (the block's stride, no bias) with BN where the
stride or the width changes. ``res-stem``: one such layer, no shortcut (its tap is the block's only one).
"""

from __future__ import annotations

from bioplaus.kinds.base import register
from bioplaus.kinds.layered import Layer, LayeredBlock, Shortcut


def side_in(spec) -> int:
    """The block's input side (the spec's ``size_in``; its output side where it keeps the size)."""
    return spec.size_in or spec.size


class ResStem(LayeredBlock):
    """A 3x3 stride-1 convolution without bias -> BN -> φ -> channel dropout (one tap)."""

    name = "res-stem"

    def layers(self, spec) -> list[Layer]:
        return [Layer("conv1", spec.c_in, spec.c_out, 3, 1, 1, side_in(spec), spec.size, False, drop="channel")]


class BasicBlock(LayeredBlock):
    """Two 3x3 post-act layers (taps ``conv1``, ``conv2``) and the shortcut (see the module docstring)."""

    name = "basic"

    def layers(self, spec) -> list[Layer]:
        s_in = side_in(spec)
        return [Layer("conv1", spec.c_in, spec.c_out, 3, spec.stride, 1, s_in, spec.size, False, drop="channel"),
                Layer("conv2", spec.c_out, spec.c_out, 3, 1, 1, spec.size, spec.size, False, drop="channel")]

    def shortcut(self, spec) -> Shortcut:
        if spec.stride != 1 or spec.c_in != spec.c_out:
            return Shortcut("conv-bn", spec.c_in, spec.c_out, spec.stride)
        return Shortcut("identity")


RES_STEM = register(ResStem())
BASIC = register(BasicBlock())
