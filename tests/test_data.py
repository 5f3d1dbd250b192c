"""The data layer: registry, original file formats (valid and broken), locating, embedded subset."""

from __future__ import annotations

import dataclasses
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bioplaus.data import DATASETS, DataError, DatasetSpec, FileSpec, formats, get_spec, load_dataset
from bioplaus.data.dataset import EMBEDDED_DIR
from bioplaus.data.fetch import locate_files, search_dirs

FMNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- writers (independent)
def idx(a: np.ndarray, magic_type: int = 0x08) -> bytes:
    a = np.ascontiguousarray(a, np.uint8)
    return struct.pack(">BBBB", 0, 0, magic_type, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write(path: Path, data: bytes, compress: str = "gz") -> Path:
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "xz":
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


def mnist_like(folder: Path, n_train=20, n_test=10, hw=(28, 28), seed=0, compress="gz") -> tuple:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if compress == "gz" else ""
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx(x), compress)
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx(y), compress)
        arrays[prefix] = (x, y)
    return arrays


def tiny_spec(base: str = "mnist", **kw) -> DatasetSpec:
    kw.setdefault("name", "tiny-" + base)
    kw.setdefault("num_train", None)
    kw.setdefault("num_test", None)
    return dataclasses.replace(get_spec(base), **kw)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_the_papers_datasets_and_their_facts():
    assert set(DATASETS) == {
        "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10", "fashion-mnist-mini",
    }  # fmt: skip
    for spec in DATASETS.values():
        assert len(spec.class_names) == spec.num_classes == len(set(spec.class_names))
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert spec.embedded or spec.files
        for f in spec.files:
            assert f.algorithm == "md5" and len(f.digest) == 32 and int(f.digest, 16) >= 0
            assert f.url.endswith(f.filename) and f.url.startswith("http")
    fm, mini = get_spec("fashion-mnist"), get_spec("fashion-mnist-mini")
    assert (fm.crop_padding, fm.hflip, fm.mean, fm.std) == (2, True, (0.286,), (0.353,))
    assert dataclasses.replace(
        mini, name="x", embedded=False, num_train=0, num_test=0, files=()
    ) == dataclasses.replace(fm, name="x", embedded=False, num_train=0, num_test=0, files=(), folder_aliases=())
    assert (get_spec("mnist").crop_padding, get_spec("mnist").hflip) == (2, False)
    assert (get_spec("kmnist").crop_padding, get_spec("svhn").crop_padding, get_spec("stl10").crop_padding) == (0, 0, 0)
    assert (get_spec("cifar100").crop_padding, get_spec("cifar100").hflip, get_spec("cifar100").num_classes) == (
        4,
        True,
        100,
    )
    assert get_spec("stl10").input_shape == (3, 96, 96)


def test_unknown_dataset_is_one_sentence_listing_the_choices():
    with pytest.raises(DataError) as err:
        get_spec("imagenet")
    msg = str(err.value)
    assert "imagenet" in msg and all(name in msg for name in DATASETS) and "\n" not in msg


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", ["gz", "raw", "xz"])
def test_idx_roundtrip_any_compression(tmp_path, compress):
    a = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write(tmp_path / "a.idx", idx(a), compress)
    np.testing.assert_array_equal(formats.read_idx(path), a)


@pytest.mark.parametrize(
    "mangle, words",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "magic"),  # float type code: not supported
        (lambda b: b[:-7], "bytes"),  # truncated data
        (lambda b: b + b"\x00", "bytes"),  # trailing bytes
        (lambda b: b[:6], "truncated"),  # truncated header
    ],
)
def test_idx_broken_files_name_the_file(tmp_path, mangle, words):
    path = write(tmp_path / "broken-idx3-ubyte.gz", mangle(idx(np.zeros((3, 4, 4), np.uint8))))
    with pytest.raises(DataError, match=rf"^broken-idx3-ubyte\.gz: .*{words}"):
        formats.read_idx(path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    data = gzip.compress(idx(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "t.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"^t\.gz: "):
        formats.read_idx(path)


def test_idx_pair_checks_labels_and_counts(tmp_path):
    x = np.zeros((4, 28, 28), np.uint8)
    write(tmp_path / "x.gz", idx(x))
    write(tmp_path / "y.gz", idx(np.array([0, 9, 3, 2], np.uint8)))
    xs, ys = formats.read_idx_pair(tmp_path / "x.gz", tmp_path / "y.gz", 10, (28, 28))
    assert xs.shape == (4, 1, 28, 28) and xs.dtype == np.uint8 and ys.dtype == np.int64
    write(tmp_path / "bad.gz", idx(np.array([0, 10, 3, 2], np.uint8)))
    with pytest.raises(DataError, match=r"^bad\.gz: labels range over \[0, 10\]"):
        formats.read_idx_pair(tmp_path / "x.gz", tmp_path / "bad.gz", 10, (28, 28))
    write(tmp_path / "short.gz", idx(np.array([0, 1, 2], np.uint8)))
    with pytest.raises(DataError, match=r"4 images but 3 labels"):
        formats.read_idx_pair(tmp_path / "x.gz", tmp_path / "short.gz", 10, (28, 28))
    with pytest.raises(DataError, match=r"^x\.gz: .*shape"):
        formats.read_idx_pair(tmp_path / "x.gz", tmp_path / "y.gz", 10, (32, 32))


# ----------------------------------------------------------------------------- CIFAR
def cifar_tar(path: Path, which="cifar10", n=3, seed=0, bad_label=False, drop=None, payload=None) -> dict:
    rng = np.random.default_rng(seed)
    if which == "cifar10":
        members = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]
        key, classes = b"labels", 10
    else:
        members = ["cifar-100-python/train", "cifar-100-python/test"]
        key, classes = b"fine_labels", 100
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for m in [*members, members[0].split("/")[0] + "/batches.meta"]:
            if m == drop:
                continue
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, classes, n)]
            if bad_label:
                labels[-1] = classes  # one past the last class
            truth[m] = (data, labels)
            blob = payload if payload is not None else pickle.dumps({b"data": data, key: labels, b"batch_label": b"x"})
            info = tarfile.TarInfo(m)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return truth


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_tar_reads_the_right_members(tmp_path, which):
    truth = cifar_tar(tmp_path / "c.tar.gz", which)
    x_tr, y_tr, x_te, y_te = formats.read_cifar(tmp_path / "c.tar.gz", which)
    train_members, test_members, _, _ = formats.CIFAR_MEMBERS[which]
    np.testing.assert_array_equal(x_tr, np.concatenate([truth[m][0] for m in train_members]).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(y_tr, np.concatenate([truth[m][1] for m in train_members]))
    np.testing.assert_array_equal(x_te[0, 2, 1, 3], truth[test_members[0]][0][0, 2 * 1024 + 1 * 32 + 3])  # CHW
    assert x_tr.dtype == np.uint8 and y_te.dtype == np.int64 and len(y_te) == 3


def test_cifar_broken_archives(tmp_path):
    cifar_tar(tmp_path / "a.tar.gz", drop="cifar-10-batches-py/data_batch_3")
    with pytest.raises(DataError, match=r"^a\.tar\.gz: archive lacks .*data_batch_3"):
        formats.read_cifar(tmp_path / "a.tar.gz", "cifar10")
    cifar_tar(tmp_path / "b.tar.gz", bad_label=True)
    with pytest.raises(DataError, match=r"^b\.tar\.gz:cifar-10-batches-py/.*labels range"):
        formats.read_cifar(tmp_path / "b.tar.gz", "cifar10")
    evil = pickle.dumps(os.getcwd)  # a global the unpickler must refuse
    cifar_tar(tmp_path / "c.tar.gz", payload=evil)
    with pytest.raises(DataError, match=r"not a readable CIFAR pickle .*not allowed"):
        formats.read_cifar(tmp_path / "c.tar.gz", "cifar10")
    (tmp_path / "d.tar.gz").write_bytes(gzip.compress(b"not a tar" * 100))
    with pytest.raises(DataError, match=r"^d\.tar\.gz: "):
        formats.read_cifar(tmp_path / "d.tar.gz", "cifar10")


def test_cifar_count_mismatch(tmp_path):
    blob = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]})
    cifar_tar(tmp_path / "e.tar.gz", payload=blob)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        formats.read_cifar(tmp_path / "e.tar.gz", "cifar10")


# ----------------------------------------------------------------------------- SVHN
def test_svhn_mat_layout_and_label_10_is_0(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # MATLAB layout: H, W, C, N
    y = np.array([[10], [1], [9], [10], [5]], np.uint8)
    scipy.io.savemat(tmp_path / "s.mat", {"X": X, "y": y})
    x, labels = formats.read_svhn_mat(tmp_path / "s.mat")
    assert x.shape == (5, 3, 32, 32) and labels.tolist() == [0, 1, 9, 0, 5]
    assert x[3, 2, 7, 11] == X[7, 11, 2, 3]
    scipy.io.savemat(tmp_path / "bad.mat", {"X": X, "y": np.array([[0], [1], [2], [3], [4]], np.uint8)})
    with pytest.raises(DataError, match=r"^bad\.mat: SVHN labels range over \[0, 4\]"):
        formats.read_svhn_mat(tmp_path / "bad.mat")
    scipy.io.savemat(tmp_path / "n.mat", {"X": X, "y": y[:4]})
    with pytest.raises(DataError, match=r"^n\.mat: 5 images but 4 labels"):
        formats.read_svhn_mat(tmp_path / "n.mat")
    (tmp_path / "t.mat").write_bytes((tmp_path / "s.mat").read_bytes()[:300])
    with pytest.raises(DataError, match=r"^t\.mat: "):
        formats.read_svhn_mat(tmp_path / "t.mat")


# ----------------------------------------------------------------------------- STL-10
def stl_tar(path: Path, n_train=3, n_test=2, seed=0, y_train=None, cut=0):
    rng = np.random.default_rng(seed)
    out = {}
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", n_train), ("test", n_test)):
            hwc = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) truth
            stored = hwc.transpose(0, 1, 3, 2).tobytes()  # column-major per channel, as STL-10 stores
            labels = rng.integers(1, 11, n).astype(np.uint8) if (split == "test" or y_train is None) else y_train
            out[split] = (hwc, labels)
            for name, blob in ((f"{split}_X.bin", stored[: len(stored) - cut]), (f"{split}_y.bin", labels.tobytes())):
                info = tarfile.TarInfo("stl10_binary/" + name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return out


def test_stl10_binary_is_transposed_to_chw_and_labels_shift(tmp_path):
    truth = stl_tar(tmp_path / "stl.tar.gz")
    x_tr, y_tr, x_te, _ = formats.read_stl10(tmp_path / "stl.tar.gz")
    np.testing.assert_array_equal(x_tr, truth["train"][0])
    np.testing.assert_array_equal(x_te, truth["test"][0])
    np.testing.assert_array_equal(y_tr, truth["train"][1].astype(np.int64) - 1)
    assert y_tr.min() >= 0 and y_tr.max() <= 9


def test_stl10_broken(tmp_path):
    stl_tar(tmp_path / "a.tar.gz", y_train=np.array([1, 0, 3], np.uint8))
    with pytest.raises(DataError, match=r"^train_y\.bin: STL-10 labels range over \[0, 3\]"):
        formats.read_stl10(tmp_path / "a.tar.gz")
    stl_tar(tmp_path / "b.tar.gz", cut=5)
    with pytest.raises(DataError, match=r"^train_X\.bin: .*whole number"):
        formats.read_stl10(tmp_path / "b.tar.gz")
    stl_tar(tmp_path / "c.tar.gz", y_train=np.array([1, 2], np.uint8))
    with pytest.raises(DataError, match=r"3 images but 2 labels"):
        formats.read_stl10(tmp_path / "c.tar.gz")


# ----------------------------------------------------------------------------- locating and loading
@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPLAUS_DATA", raising=False)
    monkeypatch.delenv("BIOPLAUS_DATA_MIRROR", raising=False)
    return tmp_path


def test_search_order_data_dir_env_cache_system(clean_env, monkeypatch):
    spec = tiny_spec()
    monkeypatch.setenv("BIOPLAUS_DATA", str(clean_env / "env"))
    dirs = search_dirs(spec, clean_env / "arg", system_dirs=("/sys-a",))
    assert dirs == [
        clean_env / "arg" / spec.name, clean_env / "arg", clean_env / "arg" / "MNIST/raw",
        clean_env / "env" / spec.name, clean_env / "env", clean_env / "env" / "MNIST/raw",
        clean_env / "cache" / "bioplaus" / spec.name, Path("/sys-a") / spec.name,
    ]  # fmt: skip
    env = mnist_like(clean_env / "env" / spec.name, seed=1)
    cache = mnist_like(clean_env / "cache" / "bioplaus" / spec.name, seed=2)
    ds = load_dataset(spec, download=False, system_dirs=())
    np.testing.assert_array_equal(ds.x_train[:, 0], env["train"][0])
    assert ds.source == str(clean_env / "env" / spec.name)
    arg = mnist_like(clean_env / "arg", seed=3, compress="raw")  # uncompressed names are found too
    ds = load_dataset(spec, data_dir=clean_env / "arg", download=False, system_dirs=())
    np.testing.assert_array_equal(ds.y_test, arg["t10k"][1])
    monkeypatch.delenv("BIOPLAUS_DATA")
    ds = load_dataset(spec, download=False, system_dirs=())
    np.testing.assert_array_equal(ds.y_train, cache["train"][1])


def test_missing_files_without_download_say_where_to_put_them(clean_env):
    spec = tiny_spec("fashion-mnist", name="fashion-mnist")
    (clean_env / "empty").mkdir()
    with pytest.raises(DataError) as err:
        locate_files(spec, data_dir=clean_env / "empty", download=False, system_dirs=())
    msg = str(err.value)
    assert str(clean_env / "empty") in msg and str(clean_env / "cache" / "bioplaus") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "\n" not in msg


def test_load_checks_expected_sizes(clean_env):
    spec = tiny_spec(num_train=21)
    mnist_like(clean_env / "d", n_train=20)
    with pytest.raises(DataError, match="train split has 20 images, expected 21"):
        load_dataset(spec, data_dir=clean_env / "d", download=False, system_dirs=())


@pytest.mark.parametrize("base", ["cifar10", "cifar100", "stl10", "svhn"])
def test_load_dataset_dispatches_each_reader(clean_env, base):
    folder = clean_env / "d"
    folder.mkdir()
    spec = tiny_spec(base)
    if base.startswith("cifar"):
        cifar_tar(folder / spec.files[0].filename, base, n=2)
        n_train, n_test = (10 if base == "cifar10" else 2), 2
    elif base == "stl10":
        stl_tar(folder / spec.files[0].filename, n_train=3, n_test=2)
        n_train, n_test = 3, 2
    else:
        import scipy.io

        for f, n in (("train_32x32.mat", 3), ("extra_32x32.mat", 4), ("test_32x32.mat", 2)):
            scipy.io.savemat(folder / f, {"X": np.zeros((32, 32, 3, n), np.uint8), "y": np.ones((n, 1), np.uint8)})
        n_train, n_test = 7, 2  # train + extra
    ds = load_dataset(spec, data_dir=folder, download=False, system_dirs=())
    assert ds.x_train.shape == (n_train, *spec.input_shape) and ds.x_test.shape == (n_test, *spec.input_shape)
    assert ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.uint8


# ----------------------------------------------------------------------------- embedded subset
def test_embedded_mini_loads_balanced_and_small():
    ds = load_dataset("fashion-mnist-mini", download=False)
    assert ds.x_train.shape == (6000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [600] * 10 and np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.x_train.dtype == np.uint8 and 0.2 < ds.x_train.mean() / 255 < 0.4  # real images, not zeros
    folder = EMBEDDED_DIR / "fashion-mnist-mini"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 3_000_000
    notice = (folder / "LICENSE-fashion-mnist.txt").read_text()
    assert "Copyright (c) 2017 Zalando SE" in notice and "MIT" in notice


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_make_mini_reproduces_the_shipped_bytes(tmp_path, monkeypatch):
    from bioplaus.data import make_mini

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    written = make_mini.build(out=tmp_path / "mini")
    assert len(written) == 4
    for path in written:
        assert path.read_bytes() == (EMBEDDED_DIR / "fashion-mnist-mini" / path.name).read_bytes(), path.name


@pytest.mark.skipif(not FMNIST_SYSTEM.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_full_fashion_mnist_from_the_system_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOPLAUS_DATA", raising=False)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == str(FMNIST_SYSTEM)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
    x = ds.x_train.astype(np.float64) / 255
    assert abs(x.mean() - 0.286) < 0.01 and abs(x.std() - 0.353) < 0.01
    mini = load_dataset("fashion-mnist-mini")
    first_600 = np.sort(np.concatenate([np.flatnonzero(ds.y_train == c)[:600] for c in range(10)]))
    np.testing.assert_array_equal(mini.x_train, ds.x_train[first_600])
    np.testing.assert_array_equal(mini.y_train, ds.y_train[first_600])


def test_filespec_is_plain_data():
    f = FileSpec("a.gz", "http://x/a.gz", "md5", "0" * 32)
    assert dataclasses.asdict(f)["filename"] == "a.gz"
