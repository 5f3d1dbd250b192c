"""Bad input to the data layer: every case is one DataError sentence, and the disk is left alone.

The cases come from what the data layer reads: the ``data_dir`` argument (``--data-dir``), the
environment (``BIOPLAUS_DATA``, ``XDG_CACHE_HOME``, ``HOME``, ``BIOPLAUS_DATA_MIRROR``), the
download cache, and the data files of every reader (IDX, CIFAR pickle/tar, SVHN .mat, STL-10
binary), plus the batching arguments. Each case asserts: a :class:`DataError` (nothing else) whose
message is one line, and that no file or folder under the test's folders was created, changed or
removed (names, types, sizes, modes and mtimes are compared before and after).
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import io
import os
import pickle
import re
import stat
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bioplaus.backend import NUMPY
from bioplaus.data import DataError, Dataset, FileSpec, TrainBatches, eval_batches, fetch, get_spec, load_dataset
from bioplaus.data.dataset import EMBEDDED_DIR

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")  # fmt: skip
ROOT = os.geteuid() == 0


# ----------------------------------------------------------------------------- snapshots
def snapshot(*roots: Path) -> dict:
    """``{path: (type, size, mode, mtime_ns)}`` of every entry under ``roots`` (roots included)."""
    out = {}
    stack = [Path(r) for r in roots]
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        out[str(p)] = (
            stat.S_IFMT(st.st_mode),
            None if is_dir else st.st_size,
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns,
        )
        if is_dir:
            try:
                stack += [Path(e.path) for e in os.scandir(p)]
            except PermissionError:  # an unreadable folder of a case: its own entry is compared
                pass
    return out


def assert_refused(call, roots, match: str) -> str:
    """``call()`` raises a one-line DataError matching ``match`` and leaves ``roots`` unchanged."""
    before = snapshot(*roots)
    with pytest.raises(DataError) as err:
        call()
    msg = str(err.value)
    assert msg and "\n" not in msg and "\r" not in msg and msg == msg.strip(), repr(msg)
    assert "Traceback" not in msg and len(msg) < 1000, msg
    assert err.value.__cause__ is None, "a DataError must not chain the raw exception"
    assert re.search(match, msg), f"{match!r} not in {msg!r}"
    assert snapshot(*roots) == before, "the disk was changed"
    return msg


# ----------------------------------------------------------------------------- the scene
@pytest.fixture
def ctx(tmp_path, monkeypatch):
    """A home, a current folder, an empty system folder and an empty file:// mirror; no other data."""
    c = SimpleNamespace(tmp=tmp_path, mp=monkeypatch, locked=[])
    for name in ("home", "cwd", "system", "mirror", "data"):
        setattr(c, name, tmp_path / name)
        (tmp_path / name).mkdir()
    (tmp_path / "afile").write_bytes(b"not a folder")
    monkeypatch.setenv("HOME", str(c.home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("BIOPLAUS_DATA", raising=False)
    monkeypatch.setenv("BIOPLAUS_DATA_MIRROR", c.mirror.as_uri() + "/")  # offline for sure
    monkeypatch.chdir(c.cwd)  # a relative path mistakenly written to would show up here
    yield c
    for p in c.locked:
        os.chmod(p, 0o755)


def lock(c, folder: Path, mode: int) -> None:
    """chmod ``folder`` (restored after the test)."""
    os.chmod(folder, mode)
    c.locked.append(folder)


def read_only(c, folder: Path) -> None:
    """Make ``folder`` unwritable; as root (who writes anyway) the refusals are simulated."""
    lock(c, folder, 0o555)
    if not ROOT:
        return
    real_access, real_mkdir, real_open = os.access, os.mkdir, os.open
    top = str(folder)

    def inside(p) -> bool:
        p = os.path.abspath(os.fsdecode(p))
        return p == top or p.startswith(top + os.sep)

    def denied(p):
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))

    def access(p, mode, *a, **k):
        return False if (mode & os.W_OK and inside(p)) else real_access(p, mode, *a, **k)

    def mkdir(p, *a, **k):
        if inside(os.path.dirname(os.path.abspath(os.fsdecode(p)))):
            raise denied(p)
        return real_mkdir(p, *a, **k)

    def open_(p, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(p):
            raise denied(p)
        return real_open(p, flags, *a, **k)

    c.mp.setattr(os, "access", access)
    c.mp.setattr(os, "mkdir", mkdir)
    c.mp.setattr(os, "open", open_)


def needs_permissions():
    if ROOT:
        pytest.skip("running as root: chmod 000 does not stop root from reading")


# ----------------------------------------------------------------------------- tiny data
def idx(a, type_code=0x08) -> bytes:
    a = np.ascontiguousarray(a, np.uint8)
    return struct.pack(">BBBB", 0, 0, type_code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def tiny(base: str, **kw):
    kw.setdefault("name", "tiny-" + base)
    return dataclasses.replace(get_spec(base), num_train=None, num_test=None, **kw)


def write_idx(folder: Path, n_train=6, n_test=3, **replace: bytes) -> None:
    """A valid gzip IDX set in ``folder``; ``replace`` gives other bytes for some files (as is)."""
    rng = np.random.default_rng(0)
    blobs = {
        IDX_NAMES[0]: idx(rng.integers(0, 256, (n_train, 28, 28))),
        IDX_NAMES[1]: idx(rng.integers(0, 10, n_train)),
        IDX_NAMES[2]: idx(rng.integers(0, 256, (n_test, 28, 28))),
        IDX_NAMES[3]: idx(rng.integers(0, 10, n_test)),
    }
    for name, blob in blobs.items():
        (folder / name).write_bytes(replace[name] if name in replace else gzip.compress(blob, mtime=0))


def tar_of(members: dict[str, bytes], mode="w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


CIFAR10 = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"]


def cifar_members(n=2, **override) -> dict[str, bytes]:
    """Pickled CIFAR-10 batches; ``override`` maps 'data'/'labels'/'blob' to replacements in batch 1."""
    out = {}
    for i, m in enumerate(CIFAR10):
        d = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [1] * n}
        if i == 0:
            for k, v in override.items():
                if k != "blob":
                    d[k.encode()] = v
        out[m] = override["blob"] if (i == 0 and "blob" in override) else pickle.dumps(d)
    return out


def write_svhn(folder: Path, train=None) -> None:
    import scipy.io

    for f in ("train_32x32.mat", "extra_32x32.mat", "test_32x32.mat"):
        if f == "train_32x32.mat" and train is not None:
            if isinstance(train, bytes):
                (folder / f).write_bytes(train)
            else:
                scipy.io.savemat(folder / f, train)
            continue
        scipy.io.savemat(folder / f, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})


def svhn_bytes(**mat) -> bytes:
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, mat)
    return buf.getvalue()


def stl_members(n_train=2, n_test=1, **override) -> dict[str, bytes]:
    out = {
        "stl10_binary/train_X.bin": bytes(n_train * 3 * 96 * 96),
        "stl10_binary/train_y.bin": bytes([1] * n_train),
        "stl10_binary/test_X.bin": bytes(n_test * 3 * 96 * 96),
        "stl10_binary/test_y.bin": bytes([2] * n_test),
    }
    for k, v in override.items():
        if v is None:
            del out["stl10_binary/" + k]
        else:
            out["stl10_binary/" + k] = v
    return out


def load_from_data(base: str):
    """A loader for the tiny ``base`` dataset in ctx.data (no download, no system folders)."""
    return lambda c: lambda: load_dataset(tiny(base), data_dir=c.data, download=False, system_dirs=())


# ----------------------------------------------------------------------------- the cases
def fm(data_dir_of):
    """Full Fashion-MNIST with the given data_dir (default system folders: a copy may be installed)."""

    def setup(c):
        data_dir = data_dir_of(c)  # prepared now, before the snapshot
        return lambda: load_dataset("fashion-mnist", data_dir=data_dir)

    return setup


def mini(data_dir_of):
    def setup(c):
        data_dir = data_dir_of(c)
        return lambda: load_dataset("fashion-mnist-mini", data_dir=data_dir)

    return setup


def unreadable(c):
    needs_permissions()
    lock(c, c.data, 0o000)
    return c.data


def then(prepare, load):
    """Run ``prepare(c)`` (writes the bad files), then return ``load(c)``."""

    def setup(c):
        prepare(c)
        return load(c)

    return setup


def entry_instead_of_file(make):
    def prepare(c):
        write_idx(c.data)
        target = c.data / IDX_NAMES[2]
        target.unlink()
        make(target)

    return prepare


def partial_set(c):
    write_idx(c.data)
    (c.data / IDX_NAMES[3]).unlink()
    return c.data


DATA_DIR_CASES = [
    # --data-dir for a dataset on disk: never skipped in favour of another copy (e.g. the system one)
    ("missing", fm(lambda c: c.tmp / "missing"), r"--data-dir folder .*/missing does not exist"),
    ("regular-file", fm(lambda c: c.tmp / "afile"), r"afile is a file, not a folder"),
    ("device", fm(lambda c: "/dev/null"), r"/dev/null is a device, not a folder"),
    ("unreadable", fm(unreadable), r"data cannot be read \(Permission denied\)"),
    ("name-too-long", fm(lambda c: c.tmp / ("x" * 300)), r"name that is too long"),
    ("under-a-file", fm(lambda c: c.tmp / "afile" / "sub"), r"a part of the path is a file"),
    ("empty-name", fm(lambda c: ""), r"--data-dir folder name is empty"),
    ("nul-byte", fm(lambda c: "da\0ta"), r"NUL character"),
    ("not-a-path", fm(lambda c: 42), r"must be given as a path, not int"),
    ("unknown-user-home", fm(lambda c: "~no-such-user-here/data"), r"home folder is unknown"),
    ("partial-set", fm(partial_set), r"holds .* but not t10k-labels-idx1-ubyte\.gz"),
    # the embedded default dataset ignores a good data_dir but refuses a bad one (see dataset.py)
    ("mini-missing", mini(lambda c: c.tmp / "missing"), r"--data-dir folder .*/missing does not exist"),
    ("mini-regular-file", mini(lambda c: c.tmp / "afile"), r"is a file, not a folder"),
    ("mini-device", mini(lambda c: "/dev/null"), r"is a device, not a folder"),
    ("mini-unreadable", mini(unreadable), r"cannot be read \(Permission denied\)"),
    ("mini-name-too-long", mini(lambda c: c.tmp / ("x" * 300)), r"too long"),
    # what is found where a data file is expected
    ("folder-for-file", then(entry_instead_of_file(Path.mkdir), load_from_data("mnist")),
     r"t10k-images-idx3-ubyte\.gz is a folder where a data file was expected"),
    ("pipe-for-file", then(entry_instead_of_file(os.mkfifo), load_from_data("mnist")), r"is a pipe where a data file"),
    ("device-for-file", then(entry_instead_of_file(lambda p: p.symlink_to("/dev/null")), load_from_data("mnist")),
     r"is a device where a data file"),
    ("broken-link-for-file", then(entry_instead_of_file(lambda p: p.symlink_to(p.parent / "gone")),
                                  load_from_data("mnist")), r"broken symbolic link"),
]  # fmt: skip


def env(var, value_of):
    def setup(c):
        c.mp.setenv(var, str(value_of(c)))
        return lambda: load_dataset(tiny("fashion-mnist"), system_dirs=(c.system,))

    return setup


def no_home(download=True):
    def setup(c):
        import pwd

        def nobody(uid):
            raise KeyError(f"getpwuid(): uid not found: {uid}")

        c.mp.delenv("HOME")
        c.mp.setattr(pwd, "getpwuid", nobody)
        return lambda: load_dataset(tiny("fashion-mnist"), system_dirs=(c.system,), download=download)

    return setup


def served_spec(c, name="tiny-dl"):
    """A tiny IDX spec whose four files (with their md5s) are in the file:// mirror."""
    files = []
    rng = np.random.default_rng(1)
    for fname, shape in zip(IDX_NAMES, [(4, 28, 28), (4,), (2, 28, 28), (2,)], strict=True):
        blob = gzip.compress(idx(rng.integers(0, 10, shape)), mtime=0)
        (c.mirror / fname).write_bytes(blob)
        files.append(FileSpec(fname, "https://invalid.invalid/" + fname, "md5", hashlib.md5(blob).hexdigest()))
    return dataclasses.replace(get_spec("mnist"), name=name, files=tuple(files), num_train=4, num_test=2)


def download_into_read_only_cache(fool_the_check=False):
    def setup(c):
        spec = served_spec(c)
        cache = c.tmp / "cache"
        cache.mkdir()
        c.mp.setenv("XDG_CACHE_HOME", str(cache))
        read_only(c, cache)
        if fool_the_check:  # the write itself must fail cleanly too
            c.mp.setattr(fetch, "write_problem", lambda target: None)
        return lambda: load_dataset(spec, system_dirs=(c.system,))

    return setup


def mirror(url, via_env=True):
    def setup(c):
        spec = tiny("fashion-mnist")
        if via_env:
            c.mp.setenv("BIOPLAUS_DATA_MIRROR", url)
            return lambda: load_dataset(spec, system_dirs=(c.system,))
        return lambda: load_dataset(spec, system_dirs=(c.system,), mirror=url)

    return setup


def missing_in_mirror(c):
    spec = served_spec(c)
    (c.mirror / IDX_NAMES[0]).unlink()
    return lambda: load_dataset(spec, system_dirs=(c.system,))


ENV_CASES = [
    ("BIOPLAUS_DATA-missing", env("BIOPLAUS_DATA", lambda c: c.tmp / "gone"), r"BIOPLAUS_DATA folder .* does not exi"),
    ("BIOPLAUS_DATA-file", env("BIOPLAUS_DATA", lambda c: c.tmp / "afile"), r"BIOPLAUS_DATA folder .* is a file"),
    ("BIOPLAUS_DATA-device", env("BIOPLAUS_DATA", lambda c: "/dev/null"), r"BIOPLAUS_DATA folder .* is a device"),
    ("XDG_CACHE_HOME-relative", env("XDG_CACHE_HOME", lambda c: "rel/cache"), r"XDG_CACHE_HOME is the relative path"),
    ("XDG_CACHE_HOME-file", env("XDG_CACHE_HOME", lambda c: c.tmp / "afile"),
     r"cannot be downloaded into .* because .*afile is a file, not a folder; put .* in one of"),
    ("XDG_CACHE_HOME-too-long", env("XDG_CACHE_HOME", lambda c: c.tmp / ("c" * 300)), r"too long"),
    ("HOME-unset", no_home(),
     r"cannot be downloaded because the home folder is unknown .*; set HOME or XDG_CACHE_HOME, or put .* in one of"),
    ("HOME-unset-no-download", no_home(download=False), r"files not found and downloading is off"),
    ("HOME-relative", env("HOME", lambda c: "relative/home"), r"HOME is the relative path"),
    ("read-only-cache", download_into_read_only_cache(),
     r"cannot be downloaded into .*cache/bioplaus/tiny-dl because .*cache is not writable; put .* in one of"),
    ("read-only-cache-write", download_into_read_only_cache(fool_the_check=True),
     r"cannot write into .*[Pp]ermission denied.*; put .* in one of"),
    ("file-missing-in-mirror", missing_in_mirror, r"tiny-dl: files not found and train-images.* failed"),
    ("mirror-no-scheme", mirror("mirror.example.org/data"), r"BIOPLAUS_DATA_MIRROR .* is not a usable mirror URL"),
    ("mirror-bad-scheme", mirror("gopher://example.org/"), r"scheme gopher"),
    ("mirror-no-host", mirror("https:///path/"), r"no host name"),
    ("mirror-bad-port", mirror("http://example.org:port/"), r"not a usable mirror URL"),
    ("mirror-bad-ipv6", mirror("http://[::1/"), r"not a usable mirror URL"),
    ("mirror-relative-file", mirror("file://relative/folder"), r"absolute path"),
    ("mirror-space", mirror("https://example.org/my data/"), r"spaces or control characters"),
    ("mirror-query", mirror("https://example.org/?x=1"), r"query"),
    ("mirror-argument", mirror("not a url", via_env=False), r"the mirror argument 'not a url' is not a usable"),
]  # fmt: skip


def idx_case(**replace):
    return then(lambda c: write_idx(c.data, **replace), load_from_data("mnist"))


def gz(b: bytes) -> bytes:
    return gzip.compress(b, mtime=0)


GOOD_X = idx(np.zeros((6, 28, 28)))
TRUNCATED_GZ = gz(idx(np.arange(6 * 28 * 28).reshape(6, 28, 28) % 251))[:-40]
TI, TL, EI, EL = IDX_NAMES


def archive_case(filename: str, base: str, blob_of):
    return then(lambda c: (c.data / filename).write_bytes(blob_of()), load_from_data(base))


def cifar(blob_of):
    return archive_case("cifar-10-python.tar.gz", "cifar10", blob_of)


def stl(blob_of):
    return archive_case("stl10_binary.tar.gz", "stl10", blob_of)


def svhn(train):
    return then(lambda c: write_svhn(c.data, train), load_from_data("svhn"))


FILE_CASES = [
    # IDX (MNIST family)
    ("idx-truncated-gz", idx_case(**{TI: TRUNCATED_GZ}), rf"^{TI}: cannot be decompressed"),
    ("idx-garbage", idx_case(**{TI: b"\x7fELF" + bytes(range(200))}), rf"^{TI}: bad IDX magic"),
    ("idx-gzip-magic-garbage", idx_case(**{TI: b"\x1f\x8b" + bytes(range(100))}), rf"^{TI}: cannot be decompressed"),
    ("idx-xz-magic-garbage", idx_case(**{TI: b"\xfd7zXZ\x00" + bytes(100)}), rf"^{TI}: cannot be decompressed"),
    ("idx-wrong-type-code", idx_case(**{TI: gz(idx(np.zeros((6, 28, 28)), 0x0D))}), rf"^{TI}: bad IDX magic"),
    ("idx-empty-file", idx_case(**{TL: b""}), rf"^{TL}: too short"),
    ("idx-empty-gzip", idx_case(**{TL: gz(b"")}), rf"^{TL}: too short"),
    ("idx-no-dimensions", idx_case(**{TL: gz(b"\x00\x00\x08\x00")}), rf"^{TL}: IDX header declares no dimensions"),
    ("idx-truncated-header", idx_case(**{TL: gz(b"\x00\x00\x08\x03\x00\x00")}), r"declares 3 dimensions but is trunc"),
    ("idx-short-data", idx_case(**{TI: gz(GOOD_X[:-5])}), rf"^{TI}: IDX file has \d+ bytes but its header"),
    ("idx-huge-header", idx_case(**{TI: gz(b"\x00\x00\x08\x03" + b"\xff" * 12)}), r"its header .* declares .* more than"),
    ("idx-wrong-image-size", idx_case(**{TI: gz(idx(np.zeros((6, 32, 32))))}), r"expected \(N, 28, 28\)"),
    ("idx-labels-as-images", idx_case(**{TI: gz(idx(np.zeros(6)))}), r"IDX images have shape \(6,\)"),
    ("idx-images-as-labels", idx_case(**{TL: gz(GOOD_X)}), rf"^{TL}: IDX labels have shape"),
    ("idx-count-mismatch", idx_case(**{TL: gz(idx(np.zeros(5)))}), r"6 images but 5 labels"),
    ("idx-label-200", idx_case(**{EL: gz(idx(np.array([0, 200, 3])))}), rf"^{EL}: labels range over \[0, 200\]"),
    ("idx-no-images", idx_case(**{EI: gz(idx(np.zeros((0, 28, 28)))), EL: gz(idx(np.zeros(0)))}),
     r"test split holds no images"),
    # CIFAR-10/100 python tar.gz of pickles
    ("cifar-truncated", cifar(lambda: tar_of(cifar_members())[:-200]),
     r"^cifar-10-python\.tar\.gz: not a readable tar archive \(unexpected end of data\)"),
    ("cifar-garbage", cifar(lambda: bytes(range(256)) * 4), r"not a readable tar archive"),
    ("cifar-empty", cifar(lambda: b""), r"not a readable tar archive \(empty file\)"),
    ("cifar-missing-member", cifar(lambda: tar_of({k: v for k, v in cifar_members().items() if "test" not in k})),
     r"archive lacks the member\(s\) cifar-10-batches-py/test_batch"),
    ("cifar-pickle-garbage", cifar(lambda: tar_of(cifar_members(blob=b"\x80\x04garbage" + bytes(range(50))))),
     r"data_batch_1: not a readable CIFAR pickle"),
    ("cifar-pickle-truncated",
     cifar(lambda: tar_of(cifar_members(blob=pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-30]))),
     r"not a readable CIFAR pickle \(UnpicklingError"),
    ("cifar-pickle-list", cifar(lambda: tar_of(cifar_members(blob=pickle.dumps([1, 2])))),
     r"holds a list, expected a dict"),
    ("cifar-pickle-code", cifar(lambda: tar_of(cifar_members(blob=pickle.dumps(os.getcwd)))), r"is not allowed"),
    ("cifar-data-float", cifar(lambda: tar_of(cifar_members(data=np.zeros((2, 3072))))), r"expected uint8 \(n, 3072\)"),
    ("cifar-data-shape", cifar(lambda: tar_of(cifar_members(data=np.zeros((2, 1024), np.uint8)))),
     r"uint8 \(2, 1024\)"),
    ("cifar-label-200", cifar(lambda: tar_of(cifar_members(labels=[0, 200]))), r"labels range over \[0, 200\]"),
    ("cifar-label-text", cifar(lambda: tar_of(cifar_members(labels=["a", "b"]))), r"labels are <U1 data, not integ"),
    ("cifar-label-ragged", cifar(lambda: tar_of(cifar_members(labels=[[1], [2, 3]]))),
     r"labels are not an array of numbers"),
    ("cifar-label-fraction", cifar(lambda: tar_of(cifar_members(labels=[1.5, 2.0]))), r"not all whole numbers"),
    ("cifar-count-mismatch", cifar(lambda: tar_of(cifar_members(labels=[1, 2, 3]))), r"2 images but 3 labels"),
    ("cifar100-label-200", archive_case("cifar-100-python.tar.gz", "cifar100", lambda: tar_of({
        "cifar-100-python/train": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 200]}),
        "cifar-100-python/test": pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [1]}),
    })), r"cifar-100-python/train: labels range over \[0, 200\], outside \[0, 99\]"),
    # SVHN .mat
    ("svhn-truncated", svhn(svhn_bytes(X=np.zeros((32, 32, 3, 2), np.uint8), y=np.ones((2, 1)))[:300]),
     r"^train_32x32\.mat: not a readable MATLAB file"),
    ("svhn-garbage", svhn(bytes(range(256)) * 2), r"^train_32x32\.mat: not a readable MATLAB file"),
    ("svhn-empty", svhn(b""), r"not a readable MATLAB file"),
    ("svhn-no-y", svhn({"X": np.zeros((32, 32, 3, 2), np.uint8)}), r"lacks the variables 'X' and 'y'"),
    ("svhn-X-shape", svhn({"X": np.zeros((28, 28, 2), np.uint8), "y": np.ones((2, 1))}),
     r"SVHN 'X' is uint8 \(28, 28, 2\)"),
    ("svhn-X-float", svhn({"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1))}), r"SVHN 'X' is float64"),
    ("svhn-label-200", svhn({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [200]])}),
     r"SVHN labels range over \[1, 200\]"),
    ("svhn-label-fraction", svhn({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1.5], [2.0]])}),
     r"not all whole numbers"),
    ("svhn-label-nan", svhn({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[np.nan], [2.0]])}),
     r"not all whole numbers"),
    ("svhn-count-mismatch", svhn({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))}),
     r"2 images but 3 labels"),
    # STL-10 binary tar.gz
    ("stl-truncated", stl(lambda: tar_of(stl_members())[:-100]),
     r"^stl10_binary\.tar\.gz: the archive is truncated"),
    ("stl-empty", stl(lambda: b""), r"not a readable tar archive"),
    ("stl-xz-garbage", stl(lambda: b"\xfd7zXZ\x00" + bytes(64)), r"not a readable tar archive"),
    ("stl-missing-member", stl(lambda: tar_of(stl_members(**{"test_y.bin": None}))),
     r"lacks the member\(s\) test_y\.bin"),
    ("stl-X-size", stl(lambda: tar_of(stl_members(**{"train_X.bin": bytes(1000)}))), r"not a whole number of 3x96x96"),
    ("stl-label-200", stl(lambda: tar_of(stl_members(**{"train_y.bin": bytes([1, 200])}))),
     r"STL-10 labels range over \[1, 200\]"),
    ("stl-count-mismatch", stl(lambda: tar_of(stl_members(**{"train_y.bin": bytes([1, 2, 3])}))),
     r"2 images but 3 labels"),
    ("stl-no-images", stl(lambda: tar_of(stl_members(n_test=0))), r"test split holds no images"),
]  # fmt: skip


def ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("case_id, setup, match", DATA_DIR_CASES + ENV_CASES + FILE_CASES,
                         ids=ids(DATA_DIR_CASES + ENV_CASES + FILE_CASES))  # fmt: skip
def test_bad_input_is_one_sentence_and_touches_nothing(ctx, case_id, setup, match):
    call = setup(ctx)  # everything a case writes is written here, before the snapshot
    roots = [ctx.tmp] + ([EMBEDDED_DIR] if case_id.startswith("mini") else [])
    assert_refused(call, roots, match)


# ----------------------------------------------------------------------------- the same, by other doors
@pytest.mark.parametrize("name", ["imagenet", "", None, ["fashion-mnist"], 3])
def test_unknown_dataset_names(ctx, name):
    assert_refused(lambda: load_dataset(name), [ctx.tmp], r"unknown dataset .*; choose one of")


def fake_dataset(n=10) -> Dataset:
    spec = get_spec("mnist")
    x = np.zeros((n, 1, 28, 28), np.uint8)
    y = np.arange(n) % 10
    return Dataset(spec, x, y, x[:3], y[:3], "fake")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, r"batch_size must be a whole number >= 1, not 0"),
        ({"batch_size": -3}, r"batch_size"),
        ({"batch_size": 2.5}, r"batch_size .* not 2\.5"),
        ({"batch_size": "8"}, r"batch_size .* not '8'"),
        ({"batch_size": True}, r"batch_size"),
        ({"seed": -1}, r"seed must be a whole number >= 0"),
        ({"seed": None}, r"seed"),
        ({"cutout_length": -1}, r"cutout_length"),
        ({"classes_per_batch": -2}, r"classes_per_batch"),
        ({"classes_per_batch_until_epoch": -1}, r"classes_per_batch_until_epoch"),
    ],
)
def test_bad_batching_arguments(ctx, kwargs, match):
    args = {"batch_size": 4, "seed": 1} | kwargs
    assert_refused(lambda: TrainBatches(fake_dataset(), NUMPY, **args), [ctx.tmp], match)


def test_bad_epoch_split_and_eval_batch_size(ctx):
    tb = TrainBatches(fake_dataset(), NUMPY, 4, seed=1)
    assert_refused(lambda: next(tb.epoch(-1)), [ctx.tmp], r"epoch must be a whole number >= 0, not -1")
    assert_refused(lambda: next(eval_batches(fake_dataset(), NUMPY, 0)), [ctx.tmp], r"batch_size .* not 0")
    assert_refused(lambda: next(eval_batches(fake_dataset(), NUMPY, 4, "val")), [ctx.tmp], r"unknown split 'val'")
    assert TrainBatches(fake_dataset(), NUMPY, 4.0, seed=np.int64(2)).batch_size == 4  # whole floats, NumPy ints pass


def test_make_mini_refuses_bad_folders_before_reading(ctx, capsys):
    from bioplaus.data import make_mini

    assert_refused(lambda: make_mini.build(out=ctx.tmp / "afile"), [ctx.tmp], r"--out .*afile is a file, not a folder")
    assert_refused(lambda: make_mini.build(out=ctx.tmp / "afile" / "x"), [ctx.tmp], r"is a file, not a folder")
    assert_refused(lambda: make_mini.build(data_dir=ctx.tmp / "gone", out=ctx.tmp / "out"), [ctx.tmp], "does not exist")
    before = snapshot(ctx.tmp)
    with pytest.raises(SystemExit) as exit_:
        make_mini.main(["--data-dir", str(ctx.tmp / "gone"), "--out", str(ctx.tmp / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("make_mini: ") and err.count("\n") == 1, err
    assert snapshot(ctx.tmp) == before


# ----------------------------------------------------------------------------- what still works
def test_settings_are_checked_only_when_the_search_reaches_them(ctx):
    """A bad BIOPLAUS_DATA, XDG_CACHE_HOME or mirror does not matter when --data-dir has the data."""
    write_idx(ctx.data)
    ctx.mp.setenv("BIOPLAUS_DATA", str(ctx.tmp / "gone"))
    ctx.mp.setenv("XDG_CACHE_HOME", "relative")
    ctx.mp.setenv("BIOPLAUS_DATA_MIRROR", "not a url")
    ds = load_dataset(tiny("mnist"), data_dir=ctx.data, system_dirs=())
    assert ds.source == str(ctx.data) and len(ds.y_train) == 6


def test_unknown_home_still_finds_system_data(ctx):
    import pwd

    sys_copy = ctx.system / "tiny-mnist"
    sys_copy.mkdir()
    write_idx(sys_copy)
    ctx.mp.delenv("HOME")
    ctx.mp.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    ds = load_dataset(tiny("mnist"), system_dirs=(ctx.system,), download=False)
    assert ds.source == str(sys_copy)
    assert os.listdir(ctx.cwd) == []  # no literal "~" folder


def test_good_data_dir_with_the_embedded_set_is_ignored(ctx):
    ds = load_dataset("fashion-mnist-mini", data_dir=ctx.data)
    assert ds.source == str(EMBEDDED_DIR / "fashion-mnist-mini") and len(ds.y_test) == 1000


def test_tilde_data_dir_and_single_system_dir_string(ctx):
    (ctx.home / "d").mkdir()
    write_idx(ctx.home / "d")
    ds = load_dataset(tiny("mnist"), data_dir="~/d", download=False, system_dirs=str(ctx.system))
    assert ds.source == str(ctx.home / "d")


def test_download_to_a_fresh_cache_still_works_and_a_failed_one_leaves_no_folders(ctx):
    spec = served_spec(ctx)
    ds = load_dataset(spec, system_dirs=(ctx.system,))
    assert len(ds.y_train) == 4 and ds.source.startswith(str(ctx.home / ".cache" / "bioplaus" / "tiny-dl"))
    other = served_spec(ctx, name="tiny-dl2")
    other = dataclasses.replace(other, files=(other.files[0], dataclasses.replace(other.files[1], digest="0" * 32),
                                              *other.files[2:]))  # fmt: skip
    files_before = {k: v[:3] for k, v in snapshot(ctx.tmp).items()}  # a folder's mtime may move: it was written in
    with pytest.raises(DataError, match=r"checksum mismatch .* nothing was cached"):
        load_dataset(other, system_dirs=(ctx.system,))
    files_after = {k: v[:3] for k, v in snapshot(ctx.tmp).items()}
    assert {k for k in files_after if "tiny-dl2" in k} == {
        str(ctx.home / ".cache/bioplaus/tiny-dl2"),
        str(ctx.home / ".cache/bioplaus/tiny-dl2" / IDX_NAMES[0]),
    }
    assert {k: v for k, v in files_after.items() if "tiny-dl2" not in k} == files_before


def test_data_error_is_always_one_line():
    assert str(DataError("a\nb\t c  \r\n")) == "a b c"
