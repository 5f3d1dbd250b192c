"""A dataset in memory: uint8 images and int64 labels on the host, plus where they came from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import formats
from .fetch import DATA_DIR_ARG, SYSTEM_DATA_DIRS, check_folder, check_sources, folder_name, locate_files, show
from .registry import EMBEDDED_SHA256, IDX_FILES, DataError, DatasetSpec, get_spec

EMBEDDED_DIR = Path(__file__).parent / "embedded"
EMBEDDED_SUFFIX = ".xz"  # embedded IDX files are xz-compressed: train-images-idx3-ubyte.xz ...


@dataclass(frozen=True, eq=False)
class Dataset:
    spec: DatasetSpec
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray  # uint8 (M, C, H, W)
    y_test: np.ndarray  # int64 (M,)
    source: str  # the folder (or archive) the arrays were read from

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise DataError(f"unknown split {split!r}; choose train or test")


def embedded_files(name: str) -> dict[str, Path]:
    """The IDX files of an embedded dataset, keyed by their official (.gz) names."""
    folder = EMBEDDED_DIR / name
    return {f: folder / (f[: -len(".gz")] + EMBEDDED_SUFFIX) for f in IDX_FILES}


def read_files(spec: DatasetSpec, paths: dict[str, Path]):
    """``(x_train, y_train, x_test, y_test)`` from the located files of ``spec``."""
    hw = spec.input_shape[1:]
    limit = {f.filename: f.content for f in spec.files}  # the most each file's content may be (None: memory)
    digests = EMBEDDED_SHA256.get(spec.name, {}) if spec.embedded else {}
    if spec.reader == "idx":
        tr, te = (formats.read_idx_pair(paths[x], paths[y], spec.num_classes, hw, (limit.get(x), limit.get(y)),
                                        (digests.get(x), digests.get(y)))
                  for x, y in (IDX_FILES[:2], IDX_FILES[2:]))
        return tr[0], tr[1], te[0], te[1]
    if spec.reader in ("cifar10", "cifar100"):
        name = spec.files[0].filename
        return formats.read_cifar(paths[name], spec.reader, limit.get(name))
    if spec.reader == "svhn":
        parts = [formats.read_svhn_mat(paths[f], limit.get(f)) for f in ("train_32x32.mat", "extra_32x32.mat",
                                                                         "test_32x32.mat")]
        x_train = np.concatenate([parts[0][0], parts[1][0]])  # train + extra, as the authors
        y_train = np.concatenate([parts[0][1], parts[1][1]])
        return x_train, y_train, parts[2][0], parts[2][1]
    if spec.reader == "stl10":
        name = spec.files[0].filename
        return formats.read_stl10(paths[name], limit.get(name))
    raise DataError(f"{spec.name}: unknown reader {spec.reader!r}")


def check_data(name: str | DatasetSpec, data_dir: str | os.PathLike | None = None, *, mirror: str | None = None,
               system_dirs=SYSTEM_DATA_DIRS) -> bool:
    """Every check of a dataset's settings that writes nothing and reads no data file: True when its files
    are on disk (or in the package), False when they would be downloaded. DataError for bad settings (a
    missing ``data_dir``, a folder with part of the dataset, an unusable cache or mirror)."""
    spec = name if isinstance(name, DatasetSpec) else get_spec(name)
    if spec.embedded:
        if data_dir is not None:
            check_folder(folder_name(data_dir, DATA_DIR_ARG), DATA_DIR_ARG)
        return True
    return check_sources(spec, data_dir, mirror=mirror, system_dirs=system_dirs)


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    mirror: str | None = None,
    system_dirs=SYSTEM_DATA_DIRS,
    progress: bool = True,
) -> Dataset:
    """Find (or download, with a progress bar unless ``progress`` is False) and read a dataset; see
    :mod:`bioplaus.data.fetch` for where it looks."""
    spec = name if isinstance(name, DatasetSpec) else get_spec(name)
    if spec.embedded:
        # The embedded set always comes from the package, whatever data_dir says. A data_dir given
        # with it is still checked, and refused when it is not a readable folder: the user typed it
        # for this run, and a typo or a missing mount (`--data-dir /mnt/dat`) must not pass silently
        # only because the default dataset happens not to need it; it would surface later, with
        # another dataset, or never. BIOPLAUS_DATA, XDG_CACHE_HOME and the mirror, ambient settings
        # made for the datasets that live on disk, are not consulted at all for this one.
        if data_dir is not None:
            check_folder(folder_name(data_dir, DATA_DIR_ARG), DATA_DIR_ARG)
        paths, source = embedded_files(spec.name), str(EMBEDDED_DIR / spec.name)
        for path in paths.values():
            if not path.is_file():
                raise DataError(f"{spec.name}: the packaged file {show(path)} is missing; reinstall bioplaus")
    else:
        paths, source = locate_files(spec, data_dir, download, mirror=mirror, system_dirs=system_dirs,
                                     progress=progress)
    x_train, y_train, x_test, y_test = read_files(spec, paths)
    for split, x, expected in (("train", x_train, spec.num_train), ("test", x_test, spec.num_test)):
        if len(x) == 0:
            raise DataError(f"{source}: the {spec.name} {split} split holds no images")
        if tuple(x.shape[1:]) != tuple(spec.input_shape):
            raise DataError(f"{source}: {split} images have shape {x.shape[1:]}, expected {spec.input_shape}")
        if expected is not None and len(x) != expected:
            raise DataError(f"{source}: {spec.name} {split} split has {len(x)} images, expected {expected}")
    return Dataset(spec, x_train, y_train, x_test, y_test, source)
