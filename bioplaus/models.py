"""Architectures: the authors' mlp and VGG-like nets as plain specifications.

A network is a list of blocks followed by one dense output layer. This module only describes shapes and
names each block's kind: what a kind of block computes, holds and costs is its :mod:`bioplaus.kinds`
object's business (``spec.kind``). The built-in kinds: ``dense`` and ``conv`` (encoder -> batch norm
-> φ -> dropout, an optional 2x2 max-pool after a conv block).

The VGG channel lists are the authors' (``'M'`` = 2x2 max-pool); ``feat_mult`` scales every
channel count; inputs larger than 64 px (STL-10) start with a 7x7 stride-2 convolution; after the
conv stack come ``num_layers`` dense blocks of ``num_hidden`` units. Parameter counts (encoders,
batch norm and output layer; no local heads) reproduce the paper's tables.

A model is a function from the configuration and the input shape to its blocks; :func:`register_model`
adds one (a network of a new block kind, say) under a name ``--model`` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from bioplaus.errors import ConfigError
from bioplaus.kinds import BlockKind, get_kind
from bioplaus.ops.pool import decoder_pool_shape

VGG_CFGS: dict[str, list] = {
    "vgg6a": [128, "M", 256, "M", 512, "M", 512],
    "vgg6b": [128, "M", 256, "M", 512, "M", 512, "M"],
    "vgg8": [64, "M", 128, "M", 256, "M", 512, "M", 512, "M"],
    "vgg8a": [128, 256, "M", 256, 512, "M", 512, "M", 512],
    "vgg8b": [128, 256, "M", 256, 512, "M", 512, "M", 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg11b": [128, 128, 128, 256, "M", 256, 512, "M", 512, 512, "M", 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@dataclass(frozen=True)
class BlockSpec:
    """Shapes of one block and its kind (a :class:`bioplaus.kinds.BlockKind`, given by object or by its
    registered name). Conv: ``c_in``/``c_out`` channels, ``size`` its output side; dense: features, size 1."""

    name: str
    kind: BlockKind  # a registered kind, or its name ("dense", "conv"): stored as the kind object
    c_in: int  # input channels (conv) or input features (dense)
    c_out: int
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    size: int = 1  # output feature-map side (conv); 1 for dense
    pool_after: bool = False  # 2x2 max-pool on the block's output (before the next block)
    # local-head pooling (DESIGN §1): average-pool window/pad so that C*h*w <= dim_in_decoder
    dec_window: tuple[int, int] = (1, 1)
    dec_pad: tuple[int, int] = (0, 0)
    dec_features: int = 0  # flattened size of the (pooled) h read by the pred decoder / sim-bpf
    conv_algorithm: str = "auto"  # how its 3x3 convolutions (and its sim head's) are computed: ops.conv
    # blocks of several layers (bioplaus.kinds.layered): input side, the heads' decoder input, the network's tail
    size_in: int = 0  # input feature-map side (0: as size)
    dim_in_decoder: int = 0  # each tap's heads pool its h to at most this many features (0: 2048)
    tail: str = ""  # the block ends the network: "avg" (global average pool), "bn-avg", "bn-max2" (BN -> ReLU -> pool)

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            object.__setattr__(self, "kind", get_kind(self.kind))

    @property
    def out_features(self) -> int:
        """Size of this block's output (after its optional pool), flattened."""
        return math.prod(self.kind.output_shape(self))

    def num_parameters(self, batch_norm: bool) -> int:
        """The block's forward parameters (its kind's count: encoder weights and bias, BN scale and shift)."""
        return self.kind.num_parameters(self, batch_norm)


@dataclass(frozen=True)
class NetSpec:
    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    blocks: tuple[BlockSpec, ...]
    out_features_in: int  # input size of the output layer
    batch_norm: bool

    @property
    def num_parameters(self) -> int:
        """Forward-network parameters (blocks and output layer; local heads excluded)."""
        head = self.out_features_in * self.num_classes + self.num_classes
        return sum(b.num_parameters(self.batch_norm) for b in self.blocks) + head


def decoder_fields(channels: int, size: int, dim_in_decoder: int) -> dict:
    """The pooling of a block's h (channels × size × size; size 1 for a dense h) before the heads that read
    pool(h): the ``dec_window``, ``dec_pad`` and ``dec_features`` fields of its spec."""
    window, pad, (oh, ow) = decoder_pool_shape(channels, size, dim_in_decoder)
    return {"dec_window": tuple(window), "dec_pad": tuple(pad), "dec_features": channels * oh * ow}


def dense_blocks(cfg, features: int) -> list[BlockSpec]:
    """``cfg.dense_layers`` dense blocks of ``cfg.num_hidden`` units after ``features`` inputs."""
    blocks = []
    for i in range(cfg.dense_layers):
        blocks.append(BlockSpec(f"fc{i + 1}", "dense", features, cfg.num_hidden,
                                **decoder_fields(cfg.num_hidden, 1, cfg.dim_in_decoder)))
        features = cfg.num_hidden
    return blocks


def mlp(cfg, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """``num_layers`` dense blocks of ``num_hidden`` units on the flattened input."""
    return dense_blocks(cfg, math.prod(input_shape))


def vgg(cfg, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """The conv blocks of ``VGG_CFGS[cfg.model]`` (3x3 convs pad 1, 'M' a 2x2 max-pool; a 7x7 stride-2 first
    conv on inputs larger than 64 px), then ``num_layers`` dense blocks."""
    channels, height, _ = input_shape
    blocks: list[BlockSpec] = []
    c_in, size = channels, height
    for item in VGG_CFGS[cfg.model]:
        if item == "M":
            if not blocks or blocks[-1].pool_after or blocks[-1].size < 2:
                raise ConfigError(f"{cfg.model} pools a {size}x{size} map; the input is too small")
            blocks[-1] = replace(blocks[-1], pool_after=True)
            size //= 2
            continue
        c_out = int(item * cfg.feat_mult)
        if c_out < 1:
            raise ConfigError(f"--feat-mult {cfg.feat_mult:g} leaves conv{len(blocks) + 1} of {cfg.model} with no "
                              f"channels ({item} x {cfg.feat_mult:g} < 1); use at least {1 / item:g}")
        first = not blocks
        kernel, stride, pad = (7, 2, 3) if first and height > 64 else (3, 1, 1)
        size = (size + 2 * pad - kernel) // stride + 1
        blocks.append(
            BlockSpec(f"conv{len(blocks) + 1}", "conv", c_in, c_out, kernel, stride, pad, size,
                      **decoder_fields(c_out, size, cfg.dim_in_decoder), conv_algorithm=cfg.conv_algorithm)
        )
        c_in = c_out
    return blocks + dense_blocks(cfg, blocks[-1].out_features)


RESNETS = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
           "resnet50": ("bottleneck", (3, 4, 6, 3))}
WRNS = {f"wresnet{d}-{k}{a}": (d, k, a == "a") for d, k in ((10, 8), (16, 4), (16, 8), (28, 10), (40, 10))
        for a in ("", "a")}
EXPANSION = {"basic": 1, "bottleneck": 4}


def _letter(j: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[j] if j < 26 else str(j)


def _strided(side: int, stride: int) -> int:
    """The output side of a 3x3 convolution with padding 1 and ``stride``."""
    return (side + 2 - 3) // stride + 1


def resnet(cfg, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """The authors' ResNet: a 3x3 conv stem (no bias, BN, φ), four stages of ``basic`` or ``bottleneck``
    blocks of 64, 128, 256, 512 (× ``feat_mult``) planes, strides 1, 2, 2, 2, then global average pooling
    (their ``avg_pool2d(x, 4)``, the same on the 4x4 map of 28 and 32 px inputs). Blocks ``res<stage><j>``."""
    kind, counts = RESNETS[cfg.model]
    channels, side, _ = input_shape
    extra = {"dim_in_decoder": cfg.dim_in_decoder, "conv_algorithm": cfg.conv_algorithm}

    def width(c: int) -> int:
        w = int(c * cfg.feat_mult)
        if w < 1:
            raise ConfigError(f"--feat-mult {cfg.feat_mult:g} leaves {cfg.model} with no channels ({c} x "
                              f"{cfg.feat_mult:g} < 1); use at least {1 / c:g}")
        return w

    blocks = [BlockSpec("conv1", "res-stem", channels, width(64), size=side, size_in=side, **extra)]
    c_in = width(64)
    for stage, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), counts, (1, 2, 2, 2)), 1):
        for j in range(n):
            s = stride if j == 0 else 1
            out = _strided(side, s)
            c_out = width(planes) * EXPANSION[kind]
            blocks.append(BlockSpec(f"res{stage}{_letter(j)}", kind, c_in, c_out, stride=s, size=out, size_in=side,
                                    **extra))
            c_in, side = c_out, out
    blocks[-1] = replace(blocks[-1], tail="avg")
    return blocks


def wresnet(cfg, input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """``cfg.model``'s Wide ResNet (:data:`WRNS`: depth, widen factor, adapted), see :func:`wide_resnet`."""
    depth, k, adapted = WRNS[cfg.model]
    return wide_resnet(cfg, input_shape, depth, k, adapted)


def wide_resnet(cfg, input_shape: tuple[int, int, int], depth: int, k: int, adapted: bool) -> list[BlockSpec]:
    """The authors' Wide ResNet of depth 6n+4 and widen factor k: a 3x3 conv stem (bias) of 16 channels (16k
    in the adapted ``a`` version), three stages of n pre-activation blocks of 16k, 32k, 64k channels, strides
    1, 2, 2, then BN -> ReLU -> global average pooling (their ``avg_pool2d(x, 8)``, the same on the 8x8 map
    of 32 px inputs), or -> 2x2 max pooling in the adapted version. Their WRN takes no ``feat_mult``."""
    if cfg.feat_mult != 1.0:
        raise ConfigError(f"--feat-mult has no meaning for {cfg.model} (its widen factor is {k}); leave it at 1")
    n = (depth - 4) // 6
    stages = [16 * k if adapted else 16, 16 * k, 32 * k, 64 * k]
    channels, side, _ = input_shape
    extra = {"dim_in_decoder": cfg.dim_in_decoder, "conv_algorithm": cfg.conv_algorithm}
    blocks = [BlockSpec("conv1", "wide-stem", channels, stages[0], size=side, size_in=side, **extra)]
    c_in = stages[0]
    for stage, (c_out, stride) in enumerate(zip(stages[1:], (1, 2, 2)), 1):
        for j in range(n):
            s = stride if j == 0 else 1
            out = _strided(side, s)
            blocks.append(BlockSpec(f"res{stage}{_letter(j)}", "wide-basic-a" if adapted else "wide-basic", c_in,
                                    c_out, stride=s, size=out, size_in=side, **extra))
            c_in, side = c_out, out
    if adapted and side < 2:
        raise ConfigError(f"{cfg.model} max-pools a {side}x{side} map; the input is too small")
    blocks[-1] = replace(blocks[-1], tail="bn-max2" if adapted else "bn-avg")
    return blocks


Model = Callable[..., Sequence[BlockSpec]]  # (cfg, input_shape (C, H, W)) -> the network's blocks
MODELS: dict[str, Model] = {"mlp": mlp, **{name: vgg for name in VGG_CFGS}, **{name: resnet for name in RESNETS},
                            **{name: wresnet for name in WRNS}}


def register_model(name: str, build: Model) -> None:
    """Add a network under ``name`` (``--model NAME``): ``build(cfg, input_shape)`` returns its blocks
    (:class:`BlockSpec` s of any registered kind); the output layer follows the last one."""
    if not name or name in MODELS:
        raise ValueError(f"a model named {name!r} exists already" if name else "a model needs a name")
    MODELS[name] = build


def build_spec(cfg, input_shape: tuple[int, int, int], num_classes: int) -> NetSpec:
    """The network of ``cfg.model`` for inputs of ``input_shape`` (C, H, W) and ``num_classes``."""
    channels, height, width = input_shape
    if height != width:
        raise ConfigError(f"models expect square inputs, got {height}x{width}")
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {', '.join(MODELS)}")
    blocks = tuple(MODELS[cfg.model](cfg, tuple(input_shape)))
    features = blocks[-1].out_features if blocks else channels * height * width
    return NetSpec(cfg.model, tuple(input_shape), num_classes, blocks, features, cfg.batch_norm)
