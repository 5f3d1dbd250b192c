"""Wide ResNet's blocks (Nøkland & Eidnes' ``wide_basic`` and their WRN's first convolution), pre-activation
layers of :mod:`bioplaus.kinds.layered`: each passes on its convolution's raw output, and its heads read
φ(BN_head(output)), a batch norm of their own.

``wide-basic``: conv1 = BN -> φ -> 3x3 conv (bias), element dropout on its output (the plain WRN's
``nn.Dropout`` between the convolutions); conv2 = BN -> φ -> 3x3 conv (bias, the block's stride) + the
shortcut (identity, or a 1x1 convolution with bias where the stride or the width changes).
``wide-basic-a`` (the adapted WRN): the same with channel dropout after each BN_pre -> φ instead.
``wide-stem``: one 3x3 convolution with bias; no dropout. The authors create its head BN also under
``--backprop`` (unused there) and so count it: so does :meth:`num_parameters`.
"""

from __future__ import annotations

from bioplaus.kinds.base import register
from bioplaus.kinds.basic import side_in
from bioplaus.kinds.layered import Layer, LayeredBlock, Shortcut


class WideStem(LayeredBlock):
    name = "wide-stem"
    counts_head_bn = True

    def layers(self, spec) -> list[Layer]:
        return [Layer("conv1", spec.c_in, spec.c_out, 3, 1, 1, side_in(spec), spec.size, True, post_act=False)]


class WideBasic(LayeredBlock):
    name = "wide-basic"
    drops = ("element", "")

    def layers(self, spec) -> list[Layer]:
        s_in = side_in(spec)
        d1, d2 = self.drops
        return [Layer("conv1", spec.c_in, spec.c_out, 3, 1, 1, s_in, s_in, True, True, False, d1),
                Layer("conv2", spec.c_out, spec.c_out, 3, spec.stride, 1, s_in, spec.size, True, True, False, d2)]

    def shortcut(self, spec) -> Shortcut:
        if spec.stride != 1 or spec.c_in != spec.c_out:
            return Shortcut("conv-bias", spec.c_in, spec.c_out, spec.stride)
        return Shortcut("identity")


class WideBasicAdapted(WideBasic):
    name = "wide-basic-a"
    drops = ("channel", "channel")


WIDE_STEM = register(WideStem())
WIDE_BASIC = register(WideBasic())
WIDE_BASIC_A = register(WideBasicAdapted())
