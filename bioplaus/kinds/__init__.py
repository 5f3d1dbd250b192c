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
from bioplaus.kinds.conv import CONV, ConvBlock
from bioplaus.kinds.dense import DENSE, DenseBlock
from bioplaus.kinds.encoder import EncoderBlock, EncoderCache

__all__ = ["CONV", "DENSE", "KINDS", "BlockForward", "BlockKind", "ConvBlock", "DenseBlock", "EncoderBlock",
           "EncoderCache", "Footprint", "MaskShape", "Tap", "draw_masks", "get_kind", "register"]
