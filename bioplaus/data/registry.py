"""The dataset registry: what each of the paper's datasets is, and where its files come from.

Facts only, no file access. Each :class:`DatasetSpec` holds the input shape, classes, the
authors' normalisation (per channel, applied to pixels/255: ``x_n = (x/255 - mean) / std``), the
authors' train-time augmentation (random crop with zero padding, horizontal flip), and the
official distribution files with their download URLs and checksums **as the publishers give
them** (all MD5: the MNIST/Fashion-MNIST/KMNIST readmes and torchvision's table of them, the
CIFAR page, the SVHN and STL-10 checksums as recorded by torchvision).

Sizes bound every read: a file's ``size`` (its bytes as distributed) where the publisher's or the
server's number is known, and the bytes of its content once decompressed or unpacked (``content``),
which follow from the format and the image counts (an IDX file of N 28x28 images is 16 + 784 N
bytes). A download stops at ``size`` (or, where it is unknown, at the most a compressed ``content``
can take), and a decompression stops at ``content``: a mirror that streams 400 MB for a 10 MB file,
or a gzip whose header declares a million images too many, is refused before it fills the disk or
the memory. SHA-256 is recorded beside MD5 where it could be computed here: of the decompressed
content of Fashion-MNIST's files (from Debian's ``dataset-fashion-mnist``, whose files hold the
same content as Zalando's, re-compressed), checked on a download, and of the embedded subset's
files, checked whenever it is read. URLs are https wherever the host serves it (Fashion-MNIST's S3
website endpoint does not).

NOTE: the checksums apply to the files as downloaded. Files found on disk are not re-hashed:
Debian's ``dataset-fashion-mnist`` re-compresses the IDX files (different MD5, identical
contents), so found files are validated by their format instead (magic numbers, sizes, labels).
"""

from __future__ import annotations

import math
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
    """One distribution file: its official name, where to get it, its published checksum, and the sizes
    that bound a download of it and a decompression of it."""

    filename: str
    url: str
    algorithm: str  # "md5" or "sha256", whichever the publisher gives
    digest: str
    size: int | None = None  # bytes as distributed, where the publisher (or its server) says; None: unknown
    content: int | None = None  # bytes once decompressed or unpacked (the members read from an archive)
    content_sha256: str | None = None  # SHA-256 of the decompressed content, where computed here

    @property
    def download_limit(self) -> int | None:
        """The most bytes a download of this file may bring: its size, else the most a compressed
        ``content`` can take (deflate grows incompressible data by well under 0.1 %, plus headers)."""
        if self.size is not None:
            return self.size
        return self.content + self.content // 500 + (64 << 10) if self.content is not None else None


def idx_bytes(*shape: int) -> int:
    """The length of an IDX file of unsigned bytes of ``shape``: its header, then the data."""
    return 4 + 4 * len(shape) + math.prod(shape)


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


def _idx_files(base_url: str, md5s: tuple[str, str, str, str], sizes: tuple[int, ...] | None = None,
               content_sha256: tuple[str, ...] | None = None, n: tuple[int, int] = (60000, 10000),
               hw: tuple[int, int] = (28, 28)) -> tuple[FileSpec, ...]:
    contents = (idx_bytes(n[0], *hw), idx_bytes(n[0]), idx_bytes(n[1], *hw), idx_bytes(n[1]))
    return tuple(FileSpec(f, base_url + f, "md5", d, size, content, digest)
                 for f, d, size, content, digest in zip(IDX_FILES, md5s, sizes or (None,) * 4, contents,
                                                        content_sha256 or (None,) * 4, strict=True))


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

# A CIFAR batch pickle: 10,000 images of 3072 bytes with their labels and file names (31 MB); the
# training set of CIFAR-100 is one pickle of 50,000 (155 MB). No member read may be larger than this.
CIFAR_MEMBER_MAX = 50000 * 3072 + 50000 * 200


def svhn_bytes(n: int) -> int:
    """The most an SVHN ``.mat`` (MATLAB 5, uncompressed) of ``n`` images can hold: ``X`` (32, 32, 3, n)
    uint8, ``y`` (n, 1) float64, and headers."""
    return n * (32 * 32 * 3 + 8) + (64 << 10)


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
            sizes=(9912422, 28881, 1648877, 4542),  # as LeCun's MNIST page lists them
        ),
        num_train=60000,
        num_test=10000,
        folder_aliases=("MNIST/raw",),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    DatasetSpec(
        name="fashion-mnist",
        **_FASHION_COMMON,
        # S3's website endpoints serve http only
        files=_idx_files(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            # Debian's re-compressed files are these sizes less the file name that Zalando's gzip
            # headers hold (24, 24, 23 and 23 bytes): the same deflate streams
            sizes=(26421880, 29515, 4422102, 5148),
            content_sha256=(
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
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
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
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
                size=170498071,  # the server's Content-Length
                content=CIFAR_MEMBER_MAX * 6,
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
                size=169001437,
                content=CIFAR_MEMBER_MAX * 6,
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
                "https://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                "md5",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
                size=182040794,
                content=svhn_bytes(73257),
            ),
            FileSpec(
                "extra_32x32.mat",
                "https://ufldl.stanford.edu/housenumbers/extra_32x32.mat",
                "md5",
                "a93ce644f1a588dc4d68dda5feec44a7",
                size=1329278602,
                content=svhn_bytes(531131),
            ),
            FileSpec(
                "test_32x32.mat",
                "https://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                "md5",
                "eb5a983be6a315427106f1b164d9cef3",
                size=64275384,
                content=svhn_bytes(26032),
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
                "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                "md5",
                "91f7769df0f17e558f3565bffb0c7dfb",
                size=2640397119,
                content=(5000 + 8000) * (3 * 96 * 96 + 1),  # train_X, train_y, test_X, test_y
            ),
        ),
        num_train=5000,  # the labelled 'train' split only (no unlabelled images)
        num_test=8000,
        homepage="https://cs.stanford.edu/~acoates/stl10/",
    ),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}

# SHA-256 of the decompressed content of the embedded subset's files (by their official names), checked
# whenever it is read: a damaged or altered installation is one sentence, not a run on other data.
# (The content, not the .xz bytes: another xz version may compress the same subset differently.)
EMBEDDED_SHA256 = {
    "fashion-mnist-mini": {
        "train-images-idx3-ubyte.gz": "cf313073c7eb485392848071d5c433571d7166043e971e3345b095cc30518084",
        "train-labels-idx1-ubyte.gz": "097b93fbcf9bd5bc648b1a457ddc55c9e4ab49afb33f9ecae8ce068399a75e3a",
        "t10k-images-idx3-ubyte.gz": "7cee33c3c6414b1b86c25e665a6c4f41584269de3b7cc9768b1d351922845eef",
        "t10k-labels-idx1-ubyte.gz": "3128d790775889812b73c4f13923559c8b9e281d112c6ea7862acf60a206a909",
    },
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; no file access."""
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
