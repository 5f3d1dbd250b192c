"""Readers for the datasets' original distribution formats.

Every reader returns host NumPy arrays: images ``uint8 (N, C, H, W)``, labels ``int64 (N,)``
in ``[0, num_classes)``. Every reader checks what it reads (magic numbers, sizes, label ranges,
image/label counts) and raises :class:`DataError` with one sentence that names the file.

- IDX (MNIST family): big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` uint32 sizes,
  then the data; type 0x08 = unsigned byte. Accepted raw, gzip- or xz-compressed (detected by
  the file's first bytes, not its name).
- CIFAR-10/100 "python version": a tar.gz of pickled dicts (``b"data"``: ``(n, 3072)`` uint8 in
  CHW order, ``b"labels"`` / ``b"fine_labels"``). Only the needed members are read, in one
  streaming pass, and unpickled with an unpickler that admits nothing but NumPy arrays.
- SVHN ``*_32x32.mat`` (MATLAB 5): ``X (32, 32, 3, N)``, ``y (N, 1)`` with digit 0 stored as 10.
- STL-10 binary (``stl10_binary.tar.gz``): ``*_X.bin`` = N images of 3x96x96 bytes, each channel
  stored column-major (so each image is transposed to get HxW); ``*_y.bin`` labels 1..10.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import lzma
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np

from bioplaus import limits

from .registry import DataError

IDX_TYPES = {0x08: np.uint8}
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"


def _name(path) -> str:
    return os.path.basename(str(path))


# --------------------------------------------------------------------------- IDX
def _too_large(name: str, exc: limits.TooLarge) -> DataError:
    return DataError(f"{name}: {exc}")


@contextlib.contextmanager
def _decompressed(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """The file's contents as a stream, decompressed as they are read when it is gzip or xz (by its
    first bytes, not its name); a failure to read or to decompress is a DataError naming the file."""
    path = Path(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 -- closed below, after the stream that reads it
    except OSError as exc:
        raise DataError(f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        magic = raw.read(len(_XZ_MAGIC))
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(_XZ_MAGIC):
            stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 -- a view of raw, closed with it
        else:
            stream = raw
        yield stream
    except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:  # truncated or corrupt
        raise DataError(f"{path.name}: cannot be decompressed, the file is truncated or corrupt ({exc})") from None
    except OSError as exc:
        if exc.errno is not None:
            raise DataError(f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        raise DataError(f"{path.name}: cannot be decompressed, the file is truncated or corrupt ({exc})") from None
    finally:
        raw.close()


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer only at the end of the stream)."""
    parts, got = [], 0
    while got < n:
        block = stream.read(min(n - got, _CHUNK))
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def read_bytes(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The file's contents, decompressed when it is gzip or xz (by magic bytes); DataError once they pass
    ``limit`` bytes (or the memory available): decompression stops there."""
    name = _name(path)
    bound = min(limit, limits.host_memory()) if limit is not None else limits.host_memory()
    with _decompressed(path) as stream:
        data = _read_up_to(stream, bound + 1)
    if len(data) > bound:
        raise DataError(f"{name}: decompresses to more than {limits.human(bound)}, more than such a file holds")
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an IDX byte string into an array of its declared shape."""
    shape, header = _idx_header(data, name)
    expected = header + math.prod(shape)  # Python ints: no overflow
    if len(data) != expected:
        raise DataError(f"{name}: IDX file has {len(data)} bytes but its header {shape} needs {expected}")
    return np.frombuffer(data, IDX_TYPES[data[2]], offset=header).reshape(shape)


def _idx_header(data: bytes, name: str) -> tuple[tuple[int, ...], int]:
    """(shape, header length) from the first bytes of an IDX file (at least 4; the dimensions if there)."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x000008nn)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1:
        raise DataError(f"{name}: IDX header declares no dimensions")
    if len(data) < header:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions but is truncated")
    return tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)), header


def read_idx(path: str | os.PathLike, limit: int | None = None, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (raw, .gz or .xz). Its header is read first: a shape that needs more than ``limit``
    bytes (a registered file's size) or than the memory available is refused before the data is
    decompressed, and decompression stops at the declared size. With ``sha256``, the decompressed
    content must have that digest."""
    name = _name(path)
    with _decompressed(path) as stream:
        head = _read_up_to(stream, 4)
        head += _read_up_to(stream, 4 * head[3]) if len(head) == 4 else b""
        shape, header = _idx_header(head, name)
        needed = header + math.prod(shape)
        try:
            limits.check_declared(needed, f"its header {shape}, which", limit)
        except limits.TooLarge as exc:
            raise _too_large(name, exc) from None
        data = head + _read_up_to(stream, needed - header)
        extra = len(stream.read(1)) if len(data) == needed else 0
    if len(data) != needed or extra:
        have = f"more than {needed}" if extra else str(len(data))
        raise DataError(f"{name}: IDX file has {have} bytes but its header {shape} needs {needed}")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{name}: its content is not the one recorded (SHA-256 {sha256[:16]}...); the file was "
                        "altered or damaged")
    return np.frombuffer(data, IDX_TYPES[data[2]], offset=header).reshape(shape)


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Labels as int64 after checking they lie in [0, num_classes)."""
    labels = integer_labels(labels, name)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels range over [{labels.min()}, {labels.max()}], outside [0, {num_classes - 1}]")
    return labels


def integer_labels(labels, name: str) -> np.ndarray:
    """``labels`` as a flat int64 array; DataError unless every label is a whole number."""
    try:
        a = np.asarray(labels)
    except (TypeError, ValueError, OverflowError) as exc:  # ragged lists, huge ints...
        raise DataError(f"{name}: labels are not an array of numbers ({exc})") from None
    if a.dtype.kind == "f" and a.size:
        if not (np.isfinite(a).all() and (a == np.round(a)).all() and np.abs(a).max() < 2**62):
            raise DataError(f"{name}: labels are not all whole numbers")
    elif a.dtype.kind not in "iubf":
        raise DataError(f"{name}: labels are {a.dtype} data, not integers")
    return a.astype(np.int64).reshape(-1)


def _check_pair(x: np.ndarray, y: np.ndarray, name: str) -> None:
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")


def read_idx_pair(images_path, labels_path, num_classes: int, image_hw: tuple[int, int],
                  limits_: tuple[int | None, int | None] = (None, None),
                  sha256: tuple[str | None, str | None] = (None, None)):
    """Images ``uint8 (N, 1, H, W)`` and labels ``int64 (N,)`` from two IDX files (``limits_``: the most
    bytes each may decompress to; ``sha256``: the digests their contents must have, where known)."""
    x = read_idx(images_path, limits_[0], sha256[0])
    if x.ndim != 3 or tuple(x.shape[1:]) != tuple(image_hw):
        raise DataError(
            f"{_name(images_path)}: IDX images have shape {x.shape}, expected (N, {image_hw[0]}, {image_hw[1]})"
        )
    y = read_idx(labels_path, limits_[1], sha256[1])
    if y.ndim != 1:
        raise DataError(f"{_name(labels_path)}: IDX labels have shape {y.shape}, expected (N,)")
    y = check_labels(y, num_classes, _name(labels_path))
    _check_pair(x, y, f"{_name(images_path)} and {_name(labels_path)}")
    return x[:, None, :, :], y  # (N, 1, H, W), (N,)


# --------------------------------------------------------------------------- tar members
def read_tar_members(path: str | os.PathLike, wanted: set[str], limit: int | None = None) -> dict[str, bytes]:
    """The bytes of the members named in ``wanted`` (matched by path or base name), one pass. Each member's
    size, as its header declares it, is checked before it is read: at most ``limit`` bytes for all the
    wanted members together (and the memory available)."""
    found: dict[str, bytes] = {}
    taken = 0
    try:
        with tarfile.open(path, "r|*") as tar:  # streaming: each member decompressed once
            for member in tar:
                key = member.name if member.name in wanted else os.path.basename(member.name)
                if member.isfile() and key in wanted and key not in found:
                    taken += member.size
                    limits.check_declared(taken, f"the member {key}", limit)
                    found[key] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
            if len(found) < len(wanted):
                # Members are missing: the archive may only be cut short, which the streaming reader
                # takes for its end. Reading on to the end of the compressed data tells them apart.
                while tar.fileobj.read(1 << 20):
                    pass
                decompressor = getattr(tar.fileobj, "cmp", None)  # tarfile's (private) zlib/bz2/lzma object
                if decompressor is not None and getattr(decompressor, "eof", True) is False:
                    raise DataError(f"{_name(path)}: the archive is truncated (its compressed data ends early)")
    except DataError:
        raise
    except limits.TooLarge as exc:
        raise _too_large(_name(path), exc) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, MemoryError) as exc:
        raise DataError(f"{_name(path)}: not a readable tar archive ({exc or type(exc).__name__})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{_name(path)}: archive lacks the member(s) {', '.join(missing)}")
    return found


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays; refuses every other global."""

    ALLOWED: ClassVar[frozenset] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 -- corrupt input can raise almost anything; see below
        # Corrupt pickle bytes can raise almost anything (UnpicklingError, EOFError, struct.error,
        # IndexError, KeyError, ValueError from NumPy's reconstructor...). Only NumPy arrays are
        # admitted (see _ArrayUnpickler), so no foreign code runs here: any failure is bad data.
        raise DataError(f"{name}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: CIFAR pickle holds a {type(obj).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


CIFAR_MEMBERS = {
    "cifar10": (
        [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        ["cifar-10-batches-py/test_batch"],
        "labels",
        10,
    ),
    "cifar100": (["cifar-100-python/train"], ["cifar-100-python/test"], "fine_labels", 100),
}


def _cifar_batch(obj: dict, label_key: str, num_classes: int, name: str):
    if "data" not in obj or label_key not in obj:
        raise DataError(f"{name}: CIFAR pickle lacks the keys 'data' and {label_key!r}")
    try:
        data = np.asarray(obj["data"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{name}: CIFAR 'data' is not an array ({exc})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{name}: CIFAR data is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    y = check_labels(obj[label_key], num_classes, name)
    _check_pair(data, y, name)
    return data.reshape(-1, 3, 32, 32), y  # (n, 3, 32, 32) CHW, as stored


def read_cifar(path: str | os.PathLike, which: str, limit: int | None = None):
    """``(x_train, y_train, x_test, y_test)`` from cifar-10-python.tar.gz / cifar-100-python.tar.gz
    (``limit``: the most bytes the members read may hold together)."""
    train_members, test_members, label_key, num_classes = CIFAR_MEMBERS[which]
    blobs = read_tar_members(path, set(train_members + test_members), limit)
    out = []
    for members in (train_members, test_members):
        parts = [
            _cifar_batch(_unpickle(blobs[m], f"{_name(path)}:{m}"), label_key, num_classes, f"{_name(path)}:{m}")
            for m in members
        ]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return tuple(out)


# --------------------------------------------------------------------------- SVHN
def read_svhn_mat(path: str | os.PathLike, limit: int | None = None):
    """Images ``uint8 (N, 3, 32, 32)`` and labels ``int64 (N,)`` (10 -> 0) from an SVHN .mat. The shapes the
    file declares for ``X`` and ``y`` are read first (``scipy.io.whosmat``): more than ``limit`` bytes
    (or the memory available) is refused before the data is read."""
    import scipy.io

    name = _name(path)
    try:
        declared = {v: math.prod(shape) for v, shape, _ in scipy.io.whosmat(str(path)) if v in ("X", "y")}
        limits.check_declared(declared.get("X", 0) + 8 * declared.get("y", 0), "its X and y", limit)
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except limits.TooLarge as exc:
        raise _too_large(name, exc) from None
    except Exception as exc:  # noqa: BLE001 -- corrupt input can raise almost anything; see below
        # scipy's MATLAB reader fails on truncated or garbage files in many ways (MatReadError,
        # OSError, ValueError, EOFError, zlib.error, struct.error, IndexError, UnicodeDecodeError...).
        if isinstance(exc, OSError) and exc.errno is not None:  # the file itself cannot be opened
            raise DataError(f"{name}: cannot be read ({exc.strerror})") from None
        raise DataError(f"{name}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{name}: SVHN file lacks the variables 'X' and 'y'")
    x, y = np.asarray(mat["X"]), integer_labels(mat["y"], name)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{name}: SVHN 'X' is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{name}: SVHN labels range over [{y.min()}, {y.max()}], outside [1, 10]")
    y = check_labels(np.where(y == 10, 0, y), 10, name)
    x = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (N, 3, 32, 32)
    _check_pair(x, y, name)
    return x, y


# --------------------------------------------------------------------------- STL-10
STL10_IMAGE_BYTES = 3 * 96 * 96


def parse_stl10(x_bytes: bytes, y_bytes: bytes, x_name: str, y_name: str):
    """Decode one STL-10 split: column-major 3x96x96 images and 1-based labels."""
    if len(x_bytes) % STL10_IMAGE_BYTES:
        raise DataError(f"{x_name}: {len(x_bytes)} bytes is not a whole number of 3x96x96 images")
    x = np.frombuffer(x_bytes, np.uint8).reshape(-1, 3, 96, 96)  # (N, C, W, H) column-major
    x = np.ascontiguousarray(x.transpose(0, 1, 3, 2))  # (N, 3, 96, 96) = (N, C, H, W)
    y = np.frombuffer(y_bytes, np.uint8).astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{y_name}: STL-10 labels range over [{y.min()}, {y.max()}], not [1, 10]")
    y = y - 1
    _check_pair(x, y, f"{x_name} and {y_name}")
    return x, y


def read_stl10(path: str | os.PathLike, limit: int | None = None):
    """``(x_train, y_train, x_test, y_test)`` from stl10_binary.tar.gz (labelled splits only; ``limit``: the
    most bytes those four members may hold together)."""
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    blobs = read_tar_members(path, set(names), limit)
    tr = parse_stl10(blobs["train_X.bin"], blobs["train_y.bin"], "train_X.bin", "train_y.bin")
    te = parse_stl10(blobs["test_X.bin"], blobs["test_y.bin"], "test_X.bin", "test_y.bin")
    return tr[0], tr[1], te[0], te[1]
