"""The dataset registry: what each of the paper's datasets is, and where its files come from.

Facts only, no file access. Each :class:`DatasetSpec` holds the input shape, classes, the
authors' normalisation (per channel, applied to pixels/255: ``x_n = (x/255 - mean) / std``), the
authors' train-time augmentation (random crop with zero padding, horizontal flip), and the
official distribution files with their download URLs and checksums **as the publishers give
them** (all MD5: the MNIST/Fashion-MNIST/KMNIST readmes and torchvision's table of them, the
CIFAR page, the SVHN and STL-10 checksums as recorded by torchvision).

NOTE: the checksums apply to the files as downloaded. Files found on disk are not re-hashed:
Debian's ``dataset-fashion-mnist`` re-compresses the IDX files (different MD5, identical
contents), so found files are validated by their format instead (magic numbers, sizes, labels).
"""

from __future__ import annotations

from dataclasses import dataclass


class DataError(RuntimeError):
    """A dataset cannot be found, fetched or read; the message is one sentence naming the file.

    The message is kept to one line (runs of whitespace, line breaks included, become one space),
    so that text quoted from a library's exception cannot break it up.
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class FileSpec:
    """One distribution file: its official name, where to get it, and its published checksum."""

    filename: str
    url: str
    algorithm: str  # "md5" or "sha256", whichever the publisher gives
    digest: str


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of pixels/255
    std: tuple[float, ...]
    crop_padding: int = 0  # random crop back to (H, W) after zero padding; 0 = no crop
    hflip: bool = False  # random horizontal flip with probability 1/2
    reader: str = "idx"  # idx | cifar10 | cifar100 | svhn | stl10 (see formats.py)
    files: tuple[FileSpec, ...] = ()
    num_train: int | None = None  # expected sizes; None = not checked
    num_test: int | None = None
    folder_aliases: tuple[str, ...] = ()  # other folder names seen in the wild (torchvision's)
    embedded: bool = False  # shipped inside the package (bioplaus/data/embedded/<name>/)
    homepage: str = ""
    license: str = ""


IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _idx_files(base_url: str, md5s: tuple[str, str, str, str]) -> tuple[FileSpec, ...]:
    return tuple(FileSpec(f, base_url + f, "md5", d) for f, d in zip(IDX_FILES, md5s, strict=True))


DIGITS = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

_FASHION_COMMON = {
    "input_shape": (1, 28, 28),
    "num_classes": 10,
    "class_names": FASHION_CLASSES,
    "mean": (0.286,),
    "std": (0.353,),
    "crop_padding": 2,
    "hflip": True,
    "reader": "idx",
    "homepage": "https://github.com/zalandoresearch/fashion-mnist",
    "license": "MIT (Copyright (c) 2017 Zalando SE)",
}

_SPECS = (
    DatasetSpec(
        name="mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        class_names=DIGITS,
        mean=(0.1307,),
        std=(0.3081,),
        crop_padding=2,
        # yann.lecun.com no longer serves reliably; this is PyTorch's mirror of the same files
        files=_idx_files(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ),
        num_train=60000,
        num_test=10000,
        folder_aliases=("MNIST/raw",),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    DatasetSpec(
        name="fashion-mnist",
        **_FASHION_COMMON,
        files=_idx_files(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
        num_train=60000,
        num_test=10000,
        folder_aliases=("FashionMNIST/raw",),
    ),
    DatasetSpec(
        name="fashion-mnist-mini",
        **_FASHION_COMMON,
        num_train=6000,
        num_test=1000,
        embedded=True,
    ),
    DatasetSpec(
        name="kmnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mean=(0.1904,),
        std=(0.3475,),
        files=_idx_files(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            (
                "bdb82020997e1d708af4cf47b453dcf7",
                "e144d726b3acfaa3e44228e80efcd344",
                "5c965bf0a639b31b8f53240b1b52f4d7",
                "7320c461ea6c1c855c0b718fb2a4b134",
            ),
        ),
        num_train=60000,
        num_test=10000,
        folder_aliases=("KMNIST/raw",),
        homepage="https://github.com/rois-codh/kmnist",
        license="CC BY-SA 4.0",
    ),
    DatasetSpec(
        name="cifar10",
        input_shape=(3, 32, 32),
        num_classes=10,
        class_names=CIFAR10_CLASSES,
        mean=(0.424, 0.415, 0.384),
        std=(0.283, 0.278, 0.284),
        crop_padding=4,
        hflip=True,
        reader="cifar10",
        files=(
            FileSpec(
                "cifar-10-python.tar.gz",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "md5",
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
        num_train=50000,
        num_test=10000,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    DatasetSpec(
        name="cifar100",
        input_shape=(3, 32, 32),
        num_classes=100,
        class_names=CIFAR100_CLASSES,
        mean=(0.438, 0.418, 0.377),
        std=(0.300, 0.287, 0.294),
        crop_padding=4,
        hflip=True,
        reader="cifar100",
        files=(
            FileSpec(
                "cifar-100-python.tar.gz",
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "md5",
                "eb9058c3a382ffc7106e4002c42a8d85",
            ),
        ),
        num_train=50000,
        num_test=10000,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    DatasetSpec(
        name="svhn",
        input_shape=(3, 32, 32),
        num_classes=10,
        class_names=DIGITS,
        mean=(0.431, 0.430, 0.446),
        std=(0.197, 0.198, 0.199),
        reader="svhn",
        files=(
            FileSpec(
                "train_32x32.mat",
                "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                "md5",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
            ),
            FileSpec(
                "extra_32x32.mat",
                "http://ufldl.stanford.edu/housenumbers/extra_32x32.mat",
                "md5",
                "a93ce644f1a588dc4d68dda5feec44a7",
            ),
            FileSpec(
                "test_32x32.mat",
                "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                "md5",
                "eb5a983be6a315427106f1b164d9cef3",
            ),
        ),
        num_train=73257 + 531131,  # train + extra, as the authors trained
        num_test=26032,
        homepage="http://ufldl.stanford.edu/housenumbers/",
        license="non-commercial use only",
    ),
    DatasetSpec(
        name="stl10",
        input_shape=(3, 96, 96),
        num_classes=10,
        class_names=STL10_CLASSES,
        mean=(0.447, 0.440, 0.407),
        std=(0.260, 0.257, 0.271),
        reader="stl10",
        files=(
            FileSpec(
                "stl10_binary.tar.gz",
                "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                "md5",
                "91f7769df0f17e558f3565bffb0c7dfb",
            ),
        ),
        num_train=5000,  # the labelled 'train' split only (no unlabelled images)
        num_test=8000,
        homepage="https://cs.stanford.edu/~acoates/stl10/",
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; no file access."""
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
