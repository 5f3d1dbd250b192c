"""ResNet-50's block (Nøkland & Eidnes' ``Bottleneck``), post-activation layers of
:mod:`bioplaus.kinds.layered`: conv1 1x1 (c_in -> planes), conv2 3x3 (the block's stride), conv3 1x1
(planes -> 4 planes = c_out), each without bias -> BN -> φ -> channel dropout and with its own tap; the
shortcut (identity, or 1x1 conv without bias and BN where the stride or the width changes) joins conv3's BN
before φ.
"""

from __future__ import annotations

from bioplaus.kinds.base import register
from bioplaus.kinds.basic import side_in
from bioplaus.kinds.layered import Layer, LayeredBlock, Shortcut

EXPANSION = 4


class Bottleneck(LayeredBlock):
    name = "bottleneck"

    def layers(self, spec) -> list[Layer]:
        planes, s_in = spec.c_out // EXPANSION, side_in(spec)
        return [Layer("conv1", spec.c_in, planes, 1, 1, 0, s_in, s_in, False, drop="channel"),
                Layer("conv2", planes, planes, 3, spec.stride, 1, s_in, spec.size, False, drop="channel"),
                Layer("conv3", planes, spec.c_out, 1, 1, 0, spec.size, spec.size, False, drop="channel")]

    def shortcut(self, spec) -> Shortcut:
        if spec.stride != 1 or spec.c_in != spec.c_out:
            return Shortcut("conv-bn", spec.c_in, spec.c_out, spec.stride)
        return Shortcut("identity")


BOTTLENECK = register(Bottleneck())
