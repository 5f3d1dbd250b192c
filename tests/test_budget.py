"""The memory estimate and the per-block costs: they grow with what they claim to count, the estimate is
dominated by the parameters for a big mlp, and the head count is exactly what the network allocates.
"""

from __future__ import annotations

import numpy as np
import pytest

from bioplaus.backend import NUMPY
from bioplaus.budget import FLOAT, block_costs, estimate_bytes, head_parameters, human
from bioplaus.config import Config
from bioplaus.models import build_spec
from bioplaus.rules import RULES, init_network

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
FORWARD = ("W", "b", "gamma", "beta")  # the forward network's own arrays (NetSpec.num_parameters)


def spec_of(cfg, shape=MNIST, classes=10):
    return build_spec(cfg, shape, classes)


def estimate(shape=MNIST, num_train=1000, **changes):
    cfg = Config(**changes).resolve()
    return estimate_bytes(cfg, spec_of(cfg, shape), num_train)


# ------------------------------------------------------------------------------ estimate_bytes
@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_estimate_grows_with_width_batch_and_data(variant):
    hidden = [estimate(variant=variant, num_hidden=n) for n in (64, 256, 1024, 4096)]
    assert hidden == sorted(hidden) and len(set(hidden)) == 4
    batch = [estimate(variant=variant, batch_size=n) for n in (16, 128, 1024)]
    assert batch == sorted(batch) and len(set(batch)) == 3
    mult = [estimate(CIFAR, variant=variant, model="vgg8b", feat_mult=m) for m in (0.25, 0.5, 1.0, 2.0)]
    assert mult == sorted(mult) and len(set(mult)) == 4
    data = [estimate(variant=variant, num_train=n) for n in (1000, 60_000)]
    assert data[1] - data[0] == 59_000 * 1 * 36 * 36  # uint8 images, padded by 4 pixels a side
    layers = [estimate(variant=variant, num_layers=n) for n in (1, 2, 3)]
    assert layers == sorted(layers) and len(set(layers)) == 3


@pytest.mark.parametrize("optim,states", [("sgd", 0), ("adam", 2), ("amsgrad", 3)])
@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_a_big_mlp_is_its_parameters(variant, optim, states):
    """For a 3x4096 mlp the parameters (and their optimizer states) are the estimate, to within 2x."""
    cfg = Config(variant=variant, num_hidden=4096, optim=optim).resolve()
    spec = spec_of(cfg)
    params = FLOAT * (spec.num_parameters + head_parameters(spec, cfg)) * (1 + states)
    est = estimate_bytes(cfg, spec, 1000)
    assert params <= est <= 2 * params, est / params


def test_the_gpu_estimate_allows_a_larger_im2col_buffer():
    cfg = Config(model="vgg8b", feat_mult=2.0, batch_size=512).resolve()
    spec = spec_of(cfg, CIFAR)
    assert estimate_bytes(cfg, spec, 1000, on_gpu=True) > estimate_bytes(cfg, spec, 1000)


# ------------------------------------------------------------------------------ head_parameters
def allocated_beyond_the_forward_network(net) -> int:
    """Sizes of every array init_network makes that is not a forward W, b, γ, β (or BN statistic)."""
    total = sum(v.size for b in net.blocks for k, v in b.params.items() if k not in FORWARD)
    total += sum(v.size for b in net.blocks for group in (b.fixed, b.feedback) for v in group.values())
    total += sum(v.size for v in net.out.feedback.values())
    return total


NETS = {
    "mlp": ({"model": "mlp", "num_layers": 2, "num_hidden": 24, "target_proj_size": 7}, MNIST),
    "conv": ({"model": "vgg6b", "feat_mult": 0.0625, "num_layers": 1, "num_hidden": 24, "dim_in_decoder": 256,
              "target_proj_size": 7}, MNIST),
}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("variant", list(RULES))
def test_head_parameters_count_what_init_network_makes(variant, net):
    settings, shape = NETS[net]
    cfg = Config(variant=variant, **settings).resolve()
    spec = spec_of(cfg, shape)
    made = init_network(spec, cfg, NUMPY, dtype=np.float32)
    assert head_parameters(spec, cfg) == allocated_beyond_the_forward_network(made)
    forward = sum(v.size for b in made.blocks for k, v in b.params.items() if k in FORWARD)
    assert forward + sum(v.size for v in made.out.params.values()) == spec.num_parameters
    if RULES[variant].heads:
        assert head_parameters(spec, cfg) > 0


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("variant,unsup", [("predsim", "sim"), ("predsim", "recon"), ("predsim-bpf", "sim"),
                                           ("sim-bpf", "recon")])
def test_head_parameters_count_the_unsupervised_heads(variant, unsup, net):
    settings, shape = NETS[net]
    cfg = Config(variant=variant, loss_unsup=unsup, alpha=0.5, **settings).resolve()
    spec = spec_of(cfg, shape)
    with_unsup = head_parameters(spec, cfg)
    assert with_unsup == allocated_beyond_the_forward_network(init_network(spec, cfg, NUMPY))
    if unsup == "recon":  # a decoder in every block but the first
        assert with_unsup > head_parameters(spec, cfg.replace(loss_unsup="none", alpha=0.0))


# ------------------------------------------------------------------------------ block_costs
@pytest.mark.parametrize("variant", ["predsim", "predsim-bpf", "pred", "sim-bpf"])
def test_block_costs_are_positive_and_grow_with_width(variant):
    narrow, wide = (spec_of(Config(variant=variant, model="vgg8b", feat_mult=m).resolve(), CIFAR) for m in (0.25, 0.5))
    c_narrow, c_wide = block_costs(narrow, variant, 128), block_costs(wide, variant, 128)
    assert len(c_narrow) == len(narrow.blocks) and all(c > 0 for c in c_narrow)
    assert all(w > n for w, n in zip(c_wide, c_narrow))
    mlp = [block_costs(spec_of(Config(variant=variant, num_hidden=h).resolve()), variant, 128) for h in (256, 1024)]
    assert all(w > n for w, n in zip(mlp[1], mlp[0]))
    double = block_costs(narrow, variant, 256)
    assert all(d > c for d, c in zip(double, c_narrow))  # a bigger batch costs more


def test_a_conv_blocks_cost_follows_its_multiply_adds():
    """The encoders' multiply-adds dominate: conv2 of vgg8b (128->256 at 32x32) costs more than conv1 (3->128)."""
    spec = spec_of(Config(variant="pred", model="vgg8b").resolve(), CIFAR)
    costs = block_costs(spec, "pred", 128)
    assert costs[1] > 10 * costs[0]


def test_human():
    assert human(512) == "512 B"
    assert human(1536) == "1.5 KiB"
    assert human(3 * 2**30) == "3.0 GiB"


# ------------------------------------------------------------------------------ convolution workspace
@pytest.mark.parametrize("shape,F", [((32, 64, 16, 16), 128), ((64, 32, 28, 28), 64), ((16, 256, 4, 4), 256),
                                     ((32, 3, 32, 32), 32)])
@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "auto"])
def test_a_convolution_holds_about_its_workspace(shape, F, algorithm):
    """What the budget counts for a conv block, the buffers of the algorithm it runs by, is what its
    forward and backward hold besides the arrays they return (tracemalloc): Winograd's chunk buffers
    (and its transformed filters, for each chunk running at once) to within 30 %; im2col's columns to
    within 2x."""
    import tracemalloc

    from bioplaus.ops import conv

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    W = rng.standard_normal((F, shape[1], 3, 3), dtype=np.float32)
    dout = rng.standard_normal((shape[0], F, shape[2], shape[3]), dtype=np.float32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out, cache = conv.conv2d_forward(x, W, None, 1, 1, algorithm)
        dx, dW, _ = conv.conv2d_backward(dout, cache)
        held = tracemalloc.get_traced_memory()[1] - base - (out.nbytes + dx.nbytes + dW.nbytes)
    finally:
        tracemalloc.stop()
    work = conv.workspace_bytes(shape, W.shape, 1, 1, algorithm, False, 4)
    low, high = (0.8, 1.3) if isinstance(cache, conv.WinogradConv) else (0.5, 2.0)
    assert low * work <= held <= high * work, (held / work, isinstance(cache, conv.WinogradConv))


def test_the_estimate_counts_the_algorithm_each_conv_block_runs_by():
    """vgg8b on CIFAR-10: each block's workspace as its --conv-algorithm runs it, on the CPU (chunks) or a
    GPU (the whole batch): "auto" is the device's own choice, and Winograd's chunks on the CPU hold less
    than im2col's columns of the widest blocks."""
    from bioplaus.ops import conv

    def of(algorithm, gpu=False):
        cfg = Config(variant="predsim-bpf", model="vgg8b", conv_algorithm=algorithm).resolve()
        return estimate_bytes(cfg, spec_of(cfg, CIFAR), 1000, on_gpu=gpu)

    assert of("auto") == of(conv.AUTO["cpu"]) and of("auto", gpu=True) == of(conv.AUTO["gpu"], gpu=True)
    assert of("winograd") < of("im2col")
    assert of("winograd", gpu=True) > of("winograd")  # on a GPU: the whole batch at once
    cfg = Config(variant="predsim-bpf", model="vgg8b", conv_algorithm="winograd").resolve()
    spec = spec_of(cfg, CIFAR)
    conv2 = spec.blocks[1]  # 128 -> 256 channels at 32x32, the largest maps
    work = conv.workspace_bytes((128, conv2.c_in, 32, 32), (conv2.c_out, conv2.c_in, 3, 3), 1, 1, "winograd", False,
                                FLOAT)
    chunk = conv.winograd_chunk((128, conv2.c_in, 32, 32), conv2.c_out, 1, FLOAT)
    workers = conv.chunk_workers(np, -(-128 // chunk))  # chunks side by side, each with its own buffers
    assert work == conv.winograd.buffer_bytes((128, conv2.c_in, 32, 32), conv2.c_out, 1, conv.WINOGRAD_TILE, FLOAT,
                                              chunk, workers)
