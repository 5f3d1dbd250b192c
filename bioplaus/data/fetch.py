"""Finding a dataset's files on disk, and downloading them (checksummed) when they are missing.

Folders are searched in this order; the first that holds every file of the dataset wins:

1. the ``data_dir`` argument (``--data-dir``): ``<data_dir>/<name>/``, then ``<data_dir>/`` itself,
   then torchvision's layout (e.g. ``<data_dir>/FashionMNIST/raw/``);
2. the environment variable ``BIOPLAUS_DATA`` (same three forms);
3. the per-user cache ``$XDG_CACHE_HOME/bioplaus/<name>/`` (default ``~/.cache/bioplaus/<name>/``);
4. system dataset folders: ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``
   installs ``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`` etc.).

A ``.gz`` file may also be present uncompressed (its name without ``.gz``).

Downloads go into the cache only, one file at a time: streamed into a temporary file in the
same folder while hashing, checked against the published checksum, then moved into place with
``os.replace``; a failed, partial or corrupt download is deleted, never cached. The base URL
may be overridden (a mirror) with the ``mirror`` argument or ``BIOPLAUS_DATA_MIRROR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from .registry import DataError, DatasetSpec, FileSpec

SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
ENV_DATA = "BIOPLAUS_DATA"
ENV_MIRROR = "BIOPLAUS_DATA_MIRROR"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The per-user cache root: ``$XDG_CACHE_HOME/bioplaus`` or ``~/.cache/bioplaus``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "bioplaus"


def search_dirs(
    spec: DatasetSpec, data_dir: str | os.PathLike | None = None, system_dirs=SYSTEM_DATA_DIRS
) -> list[Path]:
    """The folders searched for ``spec``'s files, in order."""
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get(ENV_DATA) or None):
        if root is not None:
            root = Path(root).expanduser()
            dirs += [root / spec.name, root] + [root / alias for alias in spec.folder_aliases]
    dirs.append(cache_dir() / spec.name)
    dirs += [Path(d) / spec.name for d in system_dirs]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _candidates(folder: Path, file: FileSpec) -> list[Path]:
    names = [file.filename]
    if file.filename.endswith(".gz"):
        names.append(file.filename[: -len(".gz")])
    return [folder / n for n in names]


def find_in(folder: Path, spec: DatasetSpec) -> dict[str, Path] | None:
    """``{filename: path}`` when ``folder`` holds every file of ``spec``, else None."""
    found = {}
    for file in spec.files:
        hit = next((p for p in _candidates(folder, file) if p.is_file()), None)
        if hit is None:
            return None
        found[file.filename] = hit
    return found


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    algorithm: str,
    digest: str,
    *,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its checksum; return ``dest``.

    Nothing is left at ``dest`` (nor a temporary file) unless the whole file arrived and its
    ``algorithm`` digest equals ``digest``.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total is not None else None
                received = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        received += len(block)
                        bar.update(len(block))
            if total is not None and received != total:
                raise DataError(
                    f"{dest.name}: download from {url} stopped after {received} of {total} bytes; nothing was cached"
                )
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != digest.lower():
            raise DataError(
                f"{dest.name}: checksum mismatch after download from {url} ({algorithm} {got}, "
                f"expected {digest}); nothing was cached"
            )
        os.replace(tmp, dest)
        return dest
    except DataError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, IncompleteRead, timeout...
        raise DataError(
            f"{dest.name}: download from {url} failed ({type(exc).__name__}: {exc}); nothing was cached"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _where_to_put(spec: DatasetSpec, dirs: list[Path]) -> str:
    names = ", ".join(f.filename for f in spec.files)
    msg = f"put {names} in one of {', '.join(str(d) for d in dirs)}"
    if spec.name == "fashion-mnist":
        msg += ", or run `apt-get install dataset-fashion-mnist`"
    return msg


def locate_files(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    mirror: str | None = None,
    system_dirs=SYSTEM_DATA_DIRS,
    progress: bool = True,
) -> tuple[dict[str, Path], str]:
    """``({filename: path}, source)`` for every file of ``spec``, downloading only if needed."""
    dirs = search_dirs(spec, data_dir, system_dirs)
    for folder in dirs:
        found = find_in(folder, spec)
        if found is not None:
            return found, str(folder)
    if not download:
        raise DataError(f"{spec.name}: files not found and downloading is off; {_where_to_put(spec, dirs)}")
    target = cache_dir() / spec.name
    mirror = mirror or os.environ.get(ENV_MIRROR) or None
    created = [d for d in (target, *target.parents) if not d.exists()]  # to undo if nothing arrives
    paths = {}
    try:
        _fetch_missing(spec, target, mirror, dirs, paths, progress)
    except DataError:
        for d in created:  # innermost first: leave no empty folders behind a failed download
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return paths, f"{target} (downloaded from {mirror or 'the official URLs'})"


def _fetch_missing(spec, target: Path, mirror, dirs, paths: dict, progress: bool) -> None:
    for file in spec.files:
        hit = next((p for p in _candidates(target, file) if p.is_file()), None)
        if hit is None:
            url = mirror.rstrip("/") + "/" + file.filename if mirror else file.url
            try:
                hit = download_file(url, target / file.filename, file.algorithm, file.digest, progress=progress)
            except DataError as exc:
                raise DataError(
                    f"{spec.name}: files not found and {str(exc).rstrip('.')}; {_where_to_put(spec, dirs)}"
                ) from None
        paths[file.filename] = hit
