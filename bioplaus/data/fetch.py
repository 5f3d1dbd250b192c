"""Finding a dataset's files on disk, and downloading them (checksummed) when they are missing.

Folders are searched in this order; the first that holds every file of the dataset wins:

1. the ``data_dir`` argument (``--data-dir``): ``<data_dir>/<name>/``, then ``<data_dir>/`` itself,
   then torchvision's layout (e.g. ``<data_dir>/FashionMNIST/raw/``);
2. the environment variable ``BIOPLAUS_DATA`` (same three forms);
3. the per-user cache ``$XDG_CACHE_HOME/bioplaus/<name>/`` (default ``~/.cache/bioplaus/<name>/``);
4. system dataset folders: ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``
   installs ``/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`` etc.).

A ``.gz`` file may also be present uncompressed (its name without ``.gz``).

Bad settings are refused, never skipped: each one is checked when the search reaches it, and a
problem is a :class:`DataError` with one sentence, raised before anything is written. A folder
named by ``data_dir`` or ``BIOPLAUS_DATA`` must exist and be readable, and must not hold only
part of a dataset (that is almost always a mistake, and skipping it would silently read another
copy, e.g. the system one); ``XDG_CACHE_HOME`` must be an absolute path; ``HOME`` must be known
when the cache is needed; the mirror must be an http(s)/ftp/file URL; a searched path where a
data file is expected must be a regular file (a folder, a device or a pipe there is an error).

Downloads go into the cache only, one file at a time: streamed into a temporary file in the
same folder while hashing, checked against the published checksum, then moved into place with
``os.replace``; a failed, partial or corrupt download is deleted, never cached, and folders it
created are removed again. The cache folder is checked for writing before the download starts,
and nothing is created before the server has answered. The base URL may be overridden (a
mirror) with the ``mirror`` argument or ``BIOPLAUS_DATA_MIRROR``.

A download is bounded: a server that announces more than the file's registered size (or, where
that is unknown, than its content can take compressed) is refused before anything is written, and
one that sends more is cut off at that size; the free space is checked against the announced size
first, and a disk that fills during the download is :class:`DataStorageFull` (the run's exit 74),
not bad input. A redirect from https to anything else is refused (no downgrade). Where the registry
holds the SHA-256 of a file's decompressed content, a download is checked against it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bioplaus import files

from .registry import DataError, DatasetSpec, FileSpec


class DataStorageFull(DataError):
    """The cache's file system filled (or failed) during a download: a storage failure, not bad input."""

SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
ENV_DATA = "BIOPLAUS_DATA"
ENV_MIRROR = "BIOPLAUS_DATA_MIRROR"
ENV_CACHE = "XDG_CACHE_HOME"
DATA_DIR_ARG = "--data-dir"  # how the data_dir argument is named in messages (the CLI flag)
MIRROR_SCHEMES = ("http", "https", "ftp", "file")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- describing paths
def show(path) -> str:
    """A path for a message: as given, shortened in the middle when very long."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= 120 else f"{text[:56]}...{text[-56:]}"


def why(exc: OSError) -> str:
    """What an OSError from ``stat``/``open``/``mkdir`` means, as the end of a sentence."""
    e = exc.errno
    if e == errno.ENOENT:
        return "does not exist"
    if e == errno.ENOTDIR:
        return "does not exist (a part of the path is a file, not a folder)"
    if e == errno.ENAMETOOLONG:
        return "has a name that is too long for the file system"
    if e in (errno.EACCES, errno.EPERM):
        return "cannot be used (permission denied)"
    if e == errno.ELOOP:
        return "is a loop of symbolic links"
    if e == errno.EROFS:
        return "is on a read-only file system"
    return f"cannot be used ({exc.strerror or type(exc).__name__})"


def kind(mode: int) -> str:
    """'a folder', 'a file', 'a device', ... for a ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


# --------------------------------------------------------------------------- checking settings
def folder_name(value, what: str) -> Path:
    """``value`` (a user-given folder name) as a Path, after the checks that need no disk access."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise DataError(f"the {what} folder must be given as a path, not {type(value).__name__} {value!r}")
    try:
        text = os.fsdecode(value)
    except (TypeError, UnicodeError) as exc:
        raise DataError(f"the {what} folder name is not usable ({exc})") from None
    if not text.strip():
        raise DataError(f"the {what} folder name is empty; give a folder")
    if "\0" in text:
        raise DataError(f"the {what} folder name {show(text)} contains a NUL character")
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            raise DataError(
                f"the {what} folder {show(text)} starts with ~ but that home folder is unknown; give a full path"
            )
        text = expanded
    return Path(text)


def check_folder(path: Path, what: str) -> None:
    """Refuse ``path`` unless it is an existing, readable folder."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"the {what} folder {show(path)} {why(exc)}") from None
    except ValueError as exc:  # e.g. a name the OS cannot represent
        raise DataError(f"the {what} folder name {show(path)} is not usable ({exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"the {what} folder {show(path)} is {kind(st.st_mode)}, not a folder")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        raise DataError(
            f"the {what} folder {show(path)} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None


class _HomeUnknown(DataError):
    """The home folder (hence the default cache) cannot be determined."""


def home_dir() -> Path:
    """The user's home folder, refusing an unknown or relative one (never ``~`` literally)."""
    home = os.environ.get("HOME")
    if home is None:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError, OSError):
            home = None
    if not home:
        raise _HomeUnknown("the home folder is unknown (HOME is not set), so there is no ~/.cache")
    if not os.path.isabs(home):
        raise _HomeUnknown(f"HOME is the relative path {show(home)}, so there is no usable ~/.cache")
    return Path(home)


def cache_dir() -> Path:
    """The per-user cache root: ``$XDG_CACHE_HOME/bioplaus`` or ``~/.cache/bioplaus``.

    An empty ``XDG_CACHE_HOME`` counts as unset; a relative one is refused (the XDG spec calls it
    invalid, and using it would put downloads under whatever the current folder happens to be).
    """
    xdg = os.environ.get(ENV_CACHE)
    if xdg:
        root = folder_name(xdg, ENV_CACHE)
        if not root.is_absolute():
            raise DataError(
                f"{ENV_CACHE} is the relative path {show(xdg)}; it must be absolute (or unset, for ~/.cache)"
            )
        return root / "bioplaus"
    return home_dir() / ".cache" / "bioplaus"


def check_mirror(url, what: str) -> str:
    """``url`` if it can serve as a mirror base URL (http, https, ftp or file), else DataError."""
    hint = "give one like https://host/path/ or file:///folder/"
    if not isinstance(url, str):
        raise DataError(f"{what} must be a URL string, not {type(url).__name__}; {hint}")
    bad = f"{what} {url!r} is not a usable mirror URL"
    if any(c.isspace() or not c.isprintable() for c in url):
        raise DataError(f"{bad} (it contains spaces or control characters); {hint}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise DataError(f"{bad} ({exc}); {hint}") from None
    scheme = parts.scheme.lower()
    if scheme not in MIRROR_SCHEMES:
        raise DataError(f"{bad} (scheme {parts.scheme or 'missing'}, not one of {', '.join(MIRROR_SCHEMES)}); {hint}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise DataError(f"{bad} (a file URL needs an absolute path, file:///folder/); {hint}")
    elif not parts.hostname:
        raise DataError(f"{bad} (no host name); {hint}")
    if parts.query or parts.fragment:
        raise DataError(f"{bad} (file names are appended to it, so it cannot have a ? query or # fragment); {hint}")
    return url


def _as_dirs(system_dirs) -> tuple:
    if system_dirs is None:
        return ()
    if isinstance(system_dirs, (str, bytes, os.PathLike)):  # one folder, not its characters
        return (system_dirs,)
    return tuple(system_dirs)


# --------------------------------------------------------------------------- the search
def _user_roots(spec: DatasetSpec, data_dir) -> Iterator[tuple[str, Path, list[Path]]]:
    """``(setting, root, folders)`` for ``--data-dir`` then ``BIOPLAUS_DATA``, each read when reached."""
    for value, what in ((data_dir, DATA_DIR_ARG), (os.environ.get(ENV_DATA) or None, ENV_DATA)):
        if value is not None:
            root = folder_name(value, what)
            yield what, root, [root / spec.name, root] + [root / alias for alias in spec.folder_aliases]


def _cache_folder(spec: DatasetSpec) -> tuple[Path | None, DataError | None]:
    """``(cache folder of spec, None)``, or ``(None, why)`` when HOME is unknown (a bad
    ``XDG_CACHE_HOME`` is raised). Without a home the cache is not searched, and only a download,
    which needs it, is refused: data found elsewhere (a system folder) still loads."""
    try:
        return cache_dir() / spec.name, None
    except _HomeUnknown as exc:
        return None, exc


def _system_folders(spec: DatasetSpec, system_dirs) -> list[Path]:
    return [folder_name(d, "system data") / spec.name for d in _as_dirs(system_dirs)]


def search_dirs(
    spec: DatasetSpec, data_dir: str | os.PathLike | None = None, system_dirs=SYSTEM_DATA_DIRS
) -> list[Path]:
    """The folders searched for ``spec``'s files, in order (no disk access; bad settings: DataError)."""
    dirs = [d for _, _, folders in _user_roots(spec, data_dir) for d in folders]
    cache, _ = _cache_folder(spec)
    dirs += ([cache] if cache is not None else []) + _system_folders(spec, system_dirs)
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


def probe(path: Path, dataset: str = "") -> bool:
    """True for a regular file, False when nothing is there; DataError for anything else."""
    head = f"{dataset}: " if dataset else ""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise DataError(f"{head}{show(path)} is a broken symbolic link where a data file was expected") from None
        return False
    except OSError as exc:
        raise DataError(f"{head}{show(path)} {why(exc)}") from None
    except ValueError as exc:
        raise DataError(f"{head}{show(path)} is not a usable file name ({exc})") from None
    if stat.S_ISREG(st.st_mode):
        return True
    raise DataError(f"{head}{show(path)} is {kind(st.st_mode)} where a data file was expected; remove or rename it")


def _scan(folder: Path, spec: DatasetSpec) -> dict[str, Path]:
    """``{filename: path}`` of the files of ``spec`` that ``folder`` holds (maybe only some)."""
    found = {}
    for file in spec.files:
        hit = next((p for p in _candidates(folder, file) if probe(p, spec.name)), None)
        if hit is not None:
            found[file.filename] = hit
    return found


def find_in(folder: Path, spec: DatasetSpec) -> dict[str, Path] | None:
    """``{filename: path}`` when ``folder`` holds every file of ``spec``, else None."""
    found = _scan(folder, spec)
    return found if len(found) == len(spec.files) else None


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
    except OSError as exc:
        raise DataError(f"{show(path)} cannot be read ({exc.strerror or type(exc).__name__})") from None
    return h.hexdigest()


# --------------------------------------------------------------------------- downloading
class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but never from https to another scheme."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = (urllib.parse.urlsplit(u).scheme.lower() for u in (req.full_url, newurl))
        if old == "https" and new != "https":
            raise DataError(f"{show(req.full_url)} redirects to {new or 'a relative'} URL {show(newurl)}; a download "
                            "that starts over https is never carried on without it")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngrade)


def _content_digest(path: Path, limit: int | None) -> str:
    """SHA-256 of ``path``'s decompressed content (gzip; else the bytes), reading at most ``limit`` bytes."""
    import gzip

    h = hashlib.sha256()
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if gz else raw
        seen = 0
        for block in iter(lambda: stream.read(_CHUNK), b""):
            seen += len(block)
            if limit is not None and seen > limit:
                break
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
    limit: int | None = None,
    content_sha256: str | None = None,
    content_limit: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its checksum; return ``dest``.

    Nothing is left at ``dest`` (nor a temporary file, nor a folder this call created) unless the
    whole file arrived and its ``algorithm`` digest equals ``digest`` (and, with ``content_sha256``, the
    SHA-256 of its decompressed content equals that). Nothing at all is created before the server has
    answered. ``limit``: the most bytes the file may have; a longer announcement is refused before
    anything is written and a longer stream is cut off there. A disk that fills meanwhile raises
    :class:`DataStorageFull`.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    created: list[str] = []
    tmp = None
    ok = False
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total is not None and total.strip().isdigit() else None
            if limit is not None and total is not None and total > limit:
                raise DataError(f"{dest.name}: the server at {url} announces {total} bytes, more than the {limit} "
                                "this file has; nothing was cached")
            try:
                files.ensure_space(str(dest), total or 0)
                created = files.make_folders(dest.parent)
                fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            except OSError as exc:
                if files.is_storage_failure(exc):
                    raise
                raise DataError(
                    f"{dest.name}: cannot write into {show(dest.parent)} "
                    f"({exc.strerror or type(exc).__name__}); nothing was cached"
                ) from None
            h = hashlib.new(algorithm)
            with os.fdopen(fd, "wb") as out:
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
                        received += len(block)
                        if limit is not None and received > limit:
                            raise DataError(f"{dest.name}: the server at {url} sent more than the {limit} bytes this "
                                            "file has; the download was stopped there and nothing was cached")
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
                if total is not None and received != total:
                    raise DataError(
                        f"{dest.name}: download from {url} stopped after {received} of {total} bytes; "
                        "nothing was cached"
                    )
                out.flush()
                os.fsync(out.fileno())
        got = h.hexdigest()
        if got != digest.lower():
            raise DataError(
                f"{dest.name}: checksum mismatch after download from {url} ({algorithm} {got}, "
                f"expected {digest}); nothing was cached"
            )
        if content_sha256 is not None and _content_digest(Path(tmp), content_limit) != content_sha256:
            raise DataError(f"{dest.name}: the content downloaded from {url} does not have its recorded SHA-256 "
                            f"({content_sha256}); nothing was cached")
        os.replace(tmp, dest)
        ok = True
        return dest
    except DataError:
        raise
    except OSError as exc:
        if files.is_storage_failure(exc) and not isinstance(exc, urllib.error.URLError):
            raise DataStorageFull(f"{dest.name}: no room to download it into {show(dest.parent)} "
                                  f"({exc.strerror or exc}); nothing was cached, free space and run it again") from None
        raise DataError(
            f"{dest.name}: download from {url} failed ({type(exc).__name__}: {exc}); nothing was cached"
        ) from None
    except (http.client.HTTPException, ValueError) as exc:  # IncompleteRead, a bad URL...
        raise DataError(
            f"{dest.name}: download from {url} failed ({type(exc).__name__}: {exc}); nothing was cached"
        ) from None
    finally:
        if tmp is not None and not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not ok:
            files.remove_folders(created)


def _where_to_put(spec: DatasetSpec, dirs: list[Path]) -> str:
    names = ", ".join(f.filename for f in spec.files)
    msg = f"put {names} in one of {', '.join(show(d) for d in dirs)}"
    if spec.name == "fashion-mnist":
        msg += ", or run `apt-get install dataset-fashion-mnist`"
    return msg


def write_problem(target: Path) -> str | None:
    """Why ``target`` (a folder, maybe not there yet) could not be created and written, or None.

    Looks at the nearest part of the path that exists, without creating anything. Root passes
    the permission test everywhere; a failing ``mkdir`` is still reported by the caller.
    """
    d = target
    while True:
        try:
            st = os.stat(d)
            break
        except (FileNotFoundError, NotADirectoryError):
            if d.parent == d:
                return None  # nothing exists at all: let mkdir say why
            d = d.parent
        except OSError as exc:
            return f"{show(d)} {why(exc)}"
        except ValueError as exc:
            return f"{show(d)} is not a usable name ({exc})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{show(d)} is {kind(st.st_mode)}, not a folder"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"{show(d)} is not writable"
    return None


def _search(spec: DatasetSpec, data_dir, system_dirs) -> tuple[tuple[dict[str, Path], str] | None, list[Path]]:
    """``(hit, searched)``: ``({filename: path}, folder)`` of the first folder that holds every file of
    ``spec`` (None when none does), and the folders searched. Reads only; bad settings raise DataError."""
    dirs: list[Path] = []

    def scan(folders: list[Path], setting: str | None = None):
        partial = None
        for folder in folders:
            if folder in dirs:
                continue
            dirs.append(folder)
            found = _scan(folder, spec)
            if len(found) == len(spec.files):
                return found, str(folder)
            if found and partial is None:
                partial = (folder, found)
        if setting is not None and partial is not None:
            folder, found = partial
            missing = [f.filename for f in spec.files if f.filename not in found]
            raise DataError(
                f"{spec.name}: {show(folder)} (from {setting}) holds {', '.join(found)} but not "
                f"{', '.join(missing)}; add the missing files there or give a folder that holds the whole dataset"
            )
        return None

    for setting, root, folders in _user_roots(spec, data_dir):
        check_folder(root, setting)
        hit = scan(folders, setting)
        if hit:
            return hit, dirs
    target, _ = _cache_folder(spec)
    return scan(([target] if target is not None else []) + _system_folders(spec, system_dirs)), dirs


def _download_settings(spec: DatasetSpec, dirs: list[Path], mirror: str | None) -> tuple[Path, str | None]:
    """``(cache folder, mirror)`` for a download of ``spec``, after checking that one can happen there
    (a known home or cache, a usable mirror URL, a writable cache); DataError otherwise."""
    target, no_cache = _cache_folder(spec)
    if no_cache is not None:
        raise DataError(
            f"{spec.name}: files not found and they cannot be downloaded because {no_cache}; set HOME or "
            f"{ENV_CACHE}, or {_where_to_put(spec, dirs)}"
        )
    label = "the mirror argument"
    if not mirror:
        mirror, label = os.environ.get(ENV_MIRROR) or None, ENV_MIRROR
    if mirror is not None:
        check_mirror(mirror, label)
    problem = write_problem(target)
    if problem is not None:
        raise DataError(
            f"{spec.name}: files not found and they cannot be downloaded into {show(target)} because {problem}; "
            f"{_where_to_put(spec, dirs)}"
        )
    return target, mirror


def check_sources(spec: DatasetSpec, data_dir: str | os.PathLike | None = None, *, mirror: str | None = None,
                  system_dirs=SYSTEM_DATA_DIRS) -> bool:
    """Every check of where ``spec``'s files come from that writes nothing: True when they are on disk,
    False when they would be downloaded (and a download could start: home, cache and mirror are
    usable). Bad settings raise DataError, as :func:`locate_files` would."""
    hit, dirs = _search(spec, data_dir, system_dirs)
    if hit is None:
        _download_settings(spec, dirs, mirror)
    return hit is not None


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
    hit, dirs = _search(spec, data_dir, system_dirs)
    if hit:
        return hit
    if not download:
        raise DataError(f"{spec.name}: files not found and downloading is off; {_where_to_put(spec, dirs)}")
    target, mirror = _download_settings(spec, dirs, mirror)
    created = [d for d in (target, *target.parents) if not os.path.lexists(d)]  # to undo if nothing arrives
    paths = {}
    try:
        _fetch_missing(spec, target, mirror, dirs, paths, progress)
    except DataError:
        files.remove_folders(created)  # innermost first: leave no empty folders behind a failed download
        raise
    return paths, f"{target} (downloaded from {mirror or 'the official URLs'})"


def _fetch_missing(spec, target: Path, mirror, dirs, paths: dict, progress: bool) -> None:
    for file in spec.files:
        hit = next((p for p in _candidates(target, file) if probe(p, spec.name)), None)
        if hit is None:
            url = mirror.rstrip("/") + "/" + file.filename if mirror else file.url
            try:
                hit = download_file(url, target / file.filename, file.algorithm, file.digest, progress=progress,
                                    limit=file.download_limit, content_sha256=file.content_sha256,
                                    content_limit=file.content)
            except DataError as exc:
                raise type(exc)(  # a full disk stays one (DataStorageFull)
                    f"{spec.name}: files not found and {str(exc).rstrip('.')}; {_where_to_put(spec, dirs)}"
                ) from None
        paths[file.filename] = hit
