"""Parameter counts and shapes of the paper's models (forward network: blocks + output layer)."""

import pytest

from bioplaus.config import Config, ConfigError
from bioplaus.describe import describe_model
from bioplaus.models import VGG_CFGS, build_spec

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
STL = (3, 96, 96)

# (model, feat_mult, num_layers, num_hidden, input, classes, the paper's count in millions)
PAPER_COUNTS = [
    ("mlp", 1, 3, 1024, MNIST, 10, 2.9),
    ("vgg8b", 1, 1, 1024, MNIST, 10, 7.3),
    ("vgg8b", 1, 1, 1024, CIFAR, 10, 8.9),
    ("vgg8b", 1, 1, 1024, CIFAR, 100, 9.0),
    ("vgg8b", 1, 1, 1024, STL, 10, 11.5),
    ("vgg11b", 1, 1, 1024, CIFAR, 10, 11.6),
    ("vgg11b", 2, 1, 1024, CIFAR, 10, 42.0),
    ("vgg11b", 3, 1, 1024, CIFAR, 10, 91.3),
    ("vgg8b", 2, 1, 1024, MNIST, 10, 28.2),
    ("mlp", 1, 3, 3000, CIFAR, 10, 27.3),
]


@pytest.mark.parametrize("model,mult,layers,hidden,shape,classes,millions", PAPER_COUNTS)
def test_parameter_counts_match_the_paper(model, mult, layers, hidden, shape, classes, millions):
    cfg = Config(model=model, feat_mult=float(mult), num_layers=layers, num_hidden=hidden)
    spec = build_spec(cfg, shape, classes)
    assert round(spec.num_parameters / 1e6, 1) == millions


def test_mlp_count_is_exact():
    # 784*1024+1024 + 2*(1024*1024+1024) + 3*2*1024 (BN) + 1024*10+10
    spec = build_spec(Config(model="mlp", num_layers=3, num_hidden=1024), MNIST, 10)
    assert spec.num_parameters == 784 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 6 * 1024 + 10250


def test_vgg8b_shapes():
    spec = build_spec(Config(model="vgg8b", num_layers=1), CIFAR, 10)
    convs = [b for b in spec.blocks if b.kind.name == "conv"]
    assert [b.c_out for b in convs] == [128, 256, 256, 512, 512, 512]
    assert [b.size for b in convs] == [32, 32, 16, 16, 8, 4]
    assert [b.pool_after for b in convs] == [False, True, False, True, True, True]
    assert spec.blocks[-1].c_in == 512 * 2 * 2
    # decoder pooling keeps C*h*w <= dim_in_decoder
    assert all(b.dec_features <= 4096 for b in convs)


def test_stl10_starts_with_a_strided_7x7_conv():
    spec = build_spec(Config(model="vgg8b"), STL, 10)
    first = spec.blocks[0]
    assert (first.kernel, first.stride, first.pad, first.size) == (7, 2, 3, 48)
    assert spec.blocks[1].kernel == 3


def test_every_vgg_builds_on_cifar():
    for name in VGG_CFGS:
        spec = build_spec(Config(model=name), CIFAR, 10)
        assert spec.num_parameters > 0


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model"):
        build_spec(Config(model="resnet9"), CIFAR, 10)


def test_describe_ends_with_the_count():
    text = describe_model(Config(model="vgg8b"), CIFAR, 10)
    spec = build_spec(Config(model="vgg8b"), CIFAR, 10)
    assert text.splitlines()[-1] == f"parameters: {spec.num_parameters}"
    assert "conv6" in text and "MaxPool" in text


def test_describe_labels_the_count_and_lists_the_heads_apart():
    """The count is the forward network's (the paper's); the local heads and fixed matrices are listed apart."""
    from bioplaus.budget import head_parameters

    cfg = Config(model="mlp", variant="predsim-bpf").resolve()
    spec = build_spec(cfg, (1, 28, 28), 10)
    lines = describe_model(cfg, (1, 28, 28), 10).splitlines()
    assert lines[-1] == f"parameters: {spec.num_parameters}" and spec.num_parameters == 2_919_434
    assert lines[-2].startswith("the count below is the forward network's (its blocks and output layer")
    heads = next(i for i, ln in enumerate(lines) if ln.startswith("local heads"))
    # predsim-bpf: per block a pred decoder (128 x 1024 + 128) trained; its feedback B and the projection P fixed
    assert lines[heads] == ("local heads (trained by their own losses) and fixed random matrices of predsim-bpf: "
                            "393,600 trained, 397,056 fixed")
    assert lines[heads + 1] == ("  fc1    pred decoder 131,200, pred feedback B 131,072 (fixed), label projection P "
                                "1,280 (fixed)")
    assert 393_600 + 397_056 == head_parameters(spec, cfg)
    glob = describe_model(Config(variant="glob").resolve(), (1, 28, 28), 10)
    assert "local heads and fixed matrices: none (glob)" in glob


def test_dense_layers_default_to_the_authors_choice():
    """3 dense blocks for the mlp (the paper's 3x1024), 1 after a vgg's convolutions; a flag wins."""
    assert Config(model="mlp").resolve().num_layers == 3
    assert Config(model="vgg8b").resolve().num_layers == 1
    assert Config(model="vgg8b", num_layers=2).resolve().num_layers == 2
    dense = [b for b in build_spec(Config(model="vgg8b"), CIFAR, 10).blocks if b.kind.name == "dense"]
    assert len(dense) == 1
