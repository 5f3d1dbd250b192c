"""Block kinds: each kind of block is one object in its own module (:mod:`bioplaus.kinds.base` says what
it declares); this package holds the registry and the built-in kinds."""

from bioplaus.kinds.base import (
    KINDS,
    BlockForward,
    BlockKind,
    Footprint,
    MaskShape,
    Tap,
    draw_masks,
    get_kind,
    register,
)
from bioplaus.kinds.basic import BASIC, RES_STEM, BasicBlock, ResStem
from bioplaus.kinds.bottleneck import BOTTLENECK, Bottleneck
from bioplaus.kinds.conv import CONV, ConvBlock
from bioplaus.kinds.dense import DENSE, DenseBlock
from bioplaus.kinds.encoder import EncoderBlock, EncoderCache
from bioplaus.kinds.layered import Layer, LayeredBlock, OutputError, Shortcut
from bioplaus.kinds.wide import WIDE_BASIC, WIDE_BASIC_A, WIDE_STEM, WideBasic, WideBasicAdapted, WideStem

__all__ = ["BASIC", "BOTTLENECK", "CONV", "DENSE", "KINDS", "RES_STEM", "WIDE_BASIC", "WIDE_BASIC_A", "WIDE_STEM",
           "BasicBlock", "BlockForward", "BlockKind", "Bottleneck", "ConvBlock", "DenseBlock", "EncoderBlock",
           "EncoderCache", "Footprint", "Layer", "LayeredBlock", "MaskShape", "OutputError", "ResStem", "Shortcut",
           "Tap", "WideBasic", "WideBasicAdapted", "WideStem", "draw_masks", "get_kind", "register"]
