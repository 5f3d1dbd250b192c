"""A run's files on disk, and the rules that keep a user's other files safe.

A run at ``PATH.h5`` owns three files: the log ``PATH.h5``, its checkpoint ``PATH.h5.ckpt.npz`` and
its lock ``PATH.h5.lock`` (and with ``--keep-checkpoint all`` one checkpoint per epoch,
``PATH.h5.epoch<k>.ckpt.npz``). Nothing else is ever created, replaced or removed:

- every write goes to a fresh temporary file beside its target (``.<name>.<random>.tmp``, created
  exclusively, so no existing file is ever truncated), is fsynced, then renamed over the target;
  a failed write removes its temporary file;
- ``--overwrite`` replaces only a regular file that is a bioplaus run log (and its own checkpoint);
  a device, a FIFO, a folder, a symbolic link or any other file at the path is refused;
- the lock file is kept for good (never unlinked): a process that opened it just before an unlink
  could otherwise lock a file that a third process no longer sees, and two writers would run;
- before a write, the free space is compared with what the write needs, so a full disk is met
  before HDF5 or NumPy start a file they cannot finish (:class:`StorageFull`);
- every file opened in place (a lock, a console output or a record appended to, a file read back) is
  opened with :func:`open_regular`: without following a symbolic link, without blocking (a FIFO or a
  device never hangs the caller), and only when it is a regular file;
- a refused input touches nothing, not even a folder's modification time: the checks that read come
  first, and the one check that writes (:func:`probe_folder`: an empty file made and removed, because
  /proc and the like pass ``os.access``) comes last, just before the first real write.

:class:`PathError` is bad input (one sentence, nothing written); :class:`StorageFull` and other
``OSError`` raised by :func:`atomic_write` are failures of the storage during a run.

Derived outputs (figures and tables drawn from logs: ``sims/figures.py``, ``sims/sweep.py --report``)
follow the same rules through :func:`write_outputs`: each carries a mark (a PNG text chunk, an SVG's
or a Markdown file's first comment, a PDF's document information ``/Creator``, a CSV's last column
holding a digest of the table), and an existing file at an output's path is replaced only when it
carries that mark, i.e. when bioplaus wrote it; a user's own ``errors.png``, ``results.md`` or
``results.csv`` is refused, as is anything but a regular file. Every output is checked before the first
is written.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LOG_SUFFIX = ".h5"
CHECKPOINT_SUFFIX = ".ckpt.npz"
LOCK_SUFFIX = ".lock"
LOCK_MARK = b"bioplaus run lock\n"
_LONGEST_SUFFIX = CHECKPOINT_SUFFIX + ".XXXXXXXX.tmp."  # the longest name a run makes beside its log
SPACE_MARGIN = 64 << 10  # bytes kept free beyond a write's own size (its size is known to within a few KiB)

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None


class PathError(ValueError):
    """A path that cannot be used for a run; ``str(e)`` is one sentence."""


class StorageFull(OSError):
    """The file system has no room for the next write."""


# ------------------------------------------------------------------------------ names
def checkpoint_path(log_path: str) -> str:
    """Where the checkpoint of the run logged at ``log_path`` lives."""
    return os.fspath(log_path) + CHECKPOINT_SUFFIX


def lock_path(log_path: str) -> str:
    return os.fspath(log_path) + LOCK_SUFFIX


EPOCH_CHECKPOINT = re.compile(r"\.epoch([0-9]+)" + re.escape(CHECKPOINT_SUFFIX))


def epoch_checkpoint_path(log_path: str, epoch: int) -> str:
    """Where ``--keep-checkpoint all`` keeps the checkpoint of ``epoch``: ``<log>.epoch<k>.ckpt.npz``."""
    return f"{os.fspath(log_path)}.epoch{epoch}{CHECKPOINT_SUFFIX}"


def epoch_checkpoints(log_path: str) -> list[str]:
    """The per-epoch checkpoints beside a log (whatever is at those names), in epoch order."""
    folder = os.path.dirname(os.path.abspath(log_path))
    base = os.path.basename(log_path)
    found = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.startswith(base) and (m := EPOCH_CHECKPOINT.fullmatch(name[len(base):])):
                found.append((int(m.group(1)), os.path.join(os.path.dirname(log_path), name)))
    return [path for _, path in sorted(found)]


def check_epoch_checkpoint_names(log_path: str, epochs: int) -> None:
    """The per-epoch checkpoints of a run of ``epochs`` fit the file system's name limit."""
    name = os.path.basename(epoch_checkpoint_path(log_path, epochs))
    name_max, _ = _limits(_existing_ancestor(os.path.dirname(os.path.abspath(log_path))))
    if len(os.fsencode(name)) + len(".XXXXXXXX.tmp.") + 1 > name_max:
        raise PathError(f"--keep-checkpoint all: the name of the last epoch's checkpoint, {name[:40]}..., is too "
                        "long for this file system; choose a shorter --out")


def keep_epoch_checkpoint(ckpt: str, target: str) -> None:
    """Keep the checkpoint just written as ``target`` too: a hard link (no copy, and the next epoch's
    checkpoint replaces ``ckpt``'s name, not its data), made under a temporary name and renamed over
    ``target`` (so a kill leaves it whole or absent); a copy where links are not possible."""
    folder = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(folder, _temp_prefix(target) + secrets.token_hex(4) + ".tmp")
    try:
        os.link(ckpt, tmp)
    except OSError as exc:
        if is_storage_failure(exc):
            raise
        with open(ckpt, "rb") as src:
            atomic_write(target, lambda fh: _copy(src, fh), needed=os.fstat(src.fileno()).st_size)
        return
    _replace(tmp, target, folder)


def _copy(src, dst) -> None:
    import shutil

    shutil.copyfileobj(src, dst, 1 << 20)


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def check_name(path: str, flag: str) -> None:
    """A log path a run can use: not empty, ``.h5``, short enough for every file the run makes."""
    if not path or not path.strip():
        raise PathError(f"{flag} needs a file name such as runs/run.h5")
    if "\0" in path:
        raise PathError(f"{flag} {path!r} contains a NUL character")
    if not path.endswith(LOG_SUFFIX):
        raise PathError(f"{flag} {path} must end in {LOG_SUFFIX} (an HDF5 run log)")
    base = os.path.basename(path)
    if base == LOG_SUFFIX:
        raise PathError(f"{flag} {path} has no name before {LOG_SUFFIX}")
    folder = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    name_max, path_max = _limits(folder)
    if len(os.fsencode(base)) + len(_LONGEST_SUFFIX) + 1 > name_max:
        raise PathError(f"{flag}: the file name {base[:40]}... is too long ({len(base)} characters; with the "
                        f"suffixes of its checkpoint the limit here is {name_max - len(_LONGEST_SUFFIX) - 1})")
    if len(os.fsencode(os.path.abspath(path))) + len(_LONGEST_SUFFIX) + 1 > path_max:
        raise PathError(f"{flag}: the path {path[:40]}... is too long for this file system")


def _limits(folder: str) -> tuple[int, int]:
    try:
        return os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def _missing_folders(folder: str) -> list[str]:
    """``folder`` and those of its parents that do not exist, innermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _existing_ancestor(folder: str) -> str:
    missing = _missing_folders(folder)
    return os.path.dirname(missing[-1]) if missing else folder


# ------------------------------------------------------------------------------ folders
def make_folders(folder: str | os.PathLike) -> list[str]:
    """Create ``folder`` and its missing parents; return those created, innermost first, for
    :func:`remove_folders`. On a failure the ones created are removed again and the OSError raised."""
    created: list[str] = []
    try:
        for d in reversed(_missing_folders(os.path.abspath(folder))):
            try:
                os.mkdir(d)
            except FileExistsError:  # made meanwhile by another process (two runs into a new runs/): theirs
                if not os.path.isdir(d):
                    raise
                continue
            created.insert(0, d)
    except OSError:
        remove_folders(created)
        raise
    return created


def remove_folders(folders: Sequence[str | os.PathLike]) -> None:
    """Remove the folders :func:`make_folders` created (innermost first); only empty ones go."""
    for d in folders:
        with contextlib.suppress(OSError):
            os.rmdir(d)


# ------------------------------------------------------------------------------ checks
def check_folder_writable(path: str, flag: str) -> None:
    """The folder of ``path`` exists and is writable, or can be created under a writable one: the checks
    that write nothing. :func:`probe_folder` tries it for real, last."""
    folder = os.path.dirname(os.path.abspath(path))
    probe = _existing_ancestor(folder)
    if not os.path.isdir(probe):
        raise PathError(f"cannot write {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(f"cannot write {path}: {probe} is not writable")


def probe_folder(path: str, flag: str) -> None:
    """The folder of ``path`` accepts new files (or, where it must be made, its nearest existing parent
    accepts new folders), tried for real with an empty one made and removed: /proc and the like pass
    os.access. It is the last check before writing (it touches the folder, whose times it then sets
    back: see :func:`_accepts_new`)."""
    check_folder_writable(path, flag)
    folder = os.path.dirname(os.path.abspath(path))
    probe = _existing_ancestor(folder)
    what = "files" if probe == folder else "folders"  # the folder is there, or must be made in probe
    if not _accepts_new(probe, what):
        raise PathError(f"cannot write {path}: {probe} does not accept new {what}")


def _accepts_new(folder: str, what: str) -> bool:
    """Really create (and remove) an empty temporary file or folder there: /proc and the like pass
    os.access. The folder's times are then set back to what they were, unless its entries changed
    meanwhile (another process at work there keeps the times its change gave): a command that checks
    two folders and refuses the second leaves the first as it found it."""
    try:
        before, entries = os.stat(folder), sorted(os.listdir(folder))
    except OSError:
        return False
    try:
        if what == "folders":
            tmp, remove = tempfile.mkdtemp(dir=folder, prefix=".bioplaus-probe."), os.rmdir
        else:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bioplaus-probe.", suffix=".tmp")
            os.close(fd)
            remove = os.unlink
    except OSError:
        return False
    with contextlib.suppress(OSError):
        remove(tmp)
        if sorted(os.listdir(folder)) == entries:
            os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    return True


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


_OPEN_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def open_regular(path: str, flags: int, what: str, mode: int = 0o666) -> int:
    """A descriptor of ``path`` opened with ``flags``, never through a symbolic link and never blocking,
    and only when it is a regular file (checked on the open descriptor, so nothing can be swapped in
    between); raises :class:`PathError` (one sentence naming ``what``) otherwise. Other OSErrors
    (permission, a full disk) are raised as they are."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, mode)
    except OSError as exc:
        # ELOOP: the last part is a symbolic link (O_NOFOLLOW); ENXIO: a FIFO with no reader, or a
        # device without its driver; EISDIR: a folder opened for writing
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EMLINK):
            try:
                kind = _kind(os.lstat(path).st_mode)
            except OSError:
                kind = "not a regular file"
            raise PathError(f"{path} is {kind}, not {what}; bioplaus leaves it alone") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{path} is {_kind(st.st_mode)}, not {what}; bioplaus leaves it alone")
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):  # a regular file: back to ordinary blocking I/O
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str, what: str, limit: int, tail: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), at most ``limit`` of them: the
    first, or the last when ``tail``. Raises PathError for anything but a regular file."""
    fd = open_regular(path, os.O_RDONLY, what)
    with os.fdopen(fd, "rb") as fh:
        if tail:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - limit))
        return fh.read(limit)


def append_regular(path: str, what: str):
    """A binary file object appending to ``path`` (created if missing), through :func:`open_regular`."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    return os.fdopen(fd, "ab")


def regular_file(path: str) -> bool | None:
    """None when nothing is at ``path``; True for a regular file; False for anything else (a link too)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PathError(f"cannot use {path}: {exc.strerror.lower()}") from None
    return stat.S_ISREG(st.st_mode)


def refuse_unless_regular(path: str, what: str) -> None:
    ok = regular_file(path)
    if ok is False:
        raise PathError(f"{path} is {_kind(os.lstat(path).st_mode)}, not {what}; bioplaus leaves it alone")


def check_lock_file(log: str) -> None:
    """The lock beside a log is absent, or a regular file that is empty or ours."""
    lock = lock_path(log)
    refuse_unless_regular(lock, "a bioplaus lock file")
    if regular_file(lock):
        try:
            head = read_regular(lock, "a bioplaus lock file", len(LOCK_MARK) + 1)
        except OSError as exc:
            raise PathError(f"cannot read the lock file {lock}: {exc.strerror.lower()}") from None
        if head not in (b"", LOCK_MARK):
            raise PathError(f"{lock} is not a bioplaus lock file; move it away first")


def lock_held(lock: str) -> bool:
    """True when a live process holds the lock file ``lock`` (a run holds ``<log>.lock`` while it writes);
    False when it is free or missing. The file is opened read-only (looking writes nothing) and through
    :func:`open_regular`: anything but a regular file there raises PathError."""
    if fcntl is None or not os.path.lexists(lock):
        return False
    try:
        fd = open_regular(lock, os.O_RDONLY, "a bioplaus lock file")
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock this call took
    return False


def check_not_running(log: str) -> None:
    """Refuse a log that a live process is still writing (its lock is held; a killed run's is not)."""
    if lock_held(lock_path(log)):
        raise PathError(f"{log} is being written by another running process; wait for it or stop it")


class FileLock:
    """An exclusive lock on the file ``path`` (created if missing, opened with :func:`open_regular`) for this
    process's lifetime (the kernel drops it however the process ends). The file stays when the lock is
    released: removing it could let a second holder in."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self._fh = None
        self.created = False

    def take(self, wait: bool = False) -> bool:
        """Take the lock; False when another process holds it (with ``wait``: wait for it instead; a
        signal's KeyboardInterrupt ends the wait)."""
        if fcntl is None:
            return True
        self.created = not os.path.lexists(self.path)
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, "a bioplaus lock file", 0o644)
        fh = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException as exc:
            fh.close()
            if isinstance(exc, OSError) and not wait:
                return False
            raise
        if os.fstat(fh.fileno()).st_size == 0:
            with contextlib.suppress(OSError):
                fh.write(LOCK_MARK)
                fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RunLock(FileLock):
    """The lock of the run logged at ``log``: ``<log>.lock``, held while the run writes."""

    def __init__(self, log: str) -> None:
        super().__init__(lock_path(log))

    def acquire(self) -> RunLock:
        """Take it, or raise PathError (one sentence) when another live process holds it."""
        if not self.take():
            raise PathError(f"{self.path[: -len(LOCK_SUFFIX)]} is being written by another running process; "
                            "wait for it or stop it")
        return self


# ------------------------------------------------------------------------------ writing
def free_bytes(folder: str) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def ensure_space(path: str, needed: int) -> None:
    """Raise :class:`StorageFull` when the file system of ``path`` has less than ``needed`` bytes (plus a
    margin) free: the write is then not even started."""
    folder = _existing_ancestor(os.path.dirname(os.path.abspath(path)))  # where the write will land
    free = free_bytes(folder)
    if free is not None and free < needed + SPACE_MARGIN:
        raise StorageFull(errno.ENOSPC, f"no space left on the file system of {folder} "
                                        f"({free / 2**20:.1f} MiB free, {needed / 2**20:.1f} MiB needed)")


def atomic_write(path: str, write: Callable, needed: int = 0) -> None:
    """``write(fileobj)`` into a fresh temporary file beside ``path``, fsync, rename over ``path``.

    The temporary file is created exclusively (never an existing file) and removed if anything
    fails, so a failure leaves ``path`` as it was and nothing else behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    ensure_space(path, needed)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with contextlib.suppress(OSError, AttributeError):  # mkstemp makes 0600: give the mode a new file gets
            os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _replace(tmp, path, folder)


def _replace(tmp: str, path: str, folder: str) -> None:
    """Rename the finished temporary file ``tmp`` over ``path`` (removing ``tmp`` if that fails), and make
    the rename durable."""
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _new_file_mode(path: str) -> int:
    """The mode of the file being replaced, else what ``open(path, "w")`` would give: 0o666 less the umask."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way is to set it and set it back
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:  # some file systems refuse to fsync a folder; the rename still happened
        pass
    finally:
        os.close(dfd)


def remove_stale_temps(log: str) -> list[str]:
    """Remove the temporary files a killed writer of this run left (ours by name: ``.<name>.XXXXXXXX.tmp``
    for the log or its checkpoint, nothing else: not another run's, not ``run.h5.old.h5``'s); returns them."""
    folder = os.path.dirname(os.path.abspath(log))
    ours = re.compile("|".join([*(re.escape(_temp_prefix(p)) + r"[A-Za-z0-9_]{8}\.tmp" for p in (log, checkpoint_path(log))),
                                re.escape(_temp_prefix(log)[:-1]) + r"\.epoch[0-9]+" + re.escape(CHECKPOINT_SUFFIX)
                                + r"\.[A-Za-z0-9_]{8}\.tmp"]))
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if ours.fullmatch(name):
                full = os.path.join(folder, name)
                if regular_file(full):
                    with contextlib.suppress(OSError):
                        os.unlink(full)
                        removed.append(full)
    return removed


def is_storage_failure(exc: BaseException) -> bool:
    """A failure of the storage (full, over quota, a file too large, read-only, an I/O error)."""
    return isinstance(exc, OSError) and (isinstance(exc, StorageFull) or exc.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS))


# ------------------------------------------------------------------------------ derived outputs
PNG_SOFTWARE = "bioplaus"  # the start of the PNG "Software" text chunk of every figure bioplaus writes
PNG_MARK = b"tEXtSoftware\x00" + PNG_SOFTWARE.encode()
TEXT_MARK = "<!-- written by bioplaus"  # the start of the first line of every Markdown file bioplaus writes
_HEAD_BYTES = 8192  # where a mark is looked for: PNG text chunks come before the image data


def text_mark(command: str) -> str:
    """The first line of a Markdown output (an HTML comment: not shown when rendered)."""
    return f"{TEXT_MARK}: {command}; running it again replaces this file -->\n"


# A CSV has no room for a comment that ``pandas.read_csv(path)`` would skip, and its header line is no
# mark: a table a user saved with the same columns (one made from an earlier report, say) would carry
# it. So the mark is a last column, CSV_MARK_COLUMN, whose cell in every row reads ``bioplaus <version>,
# sha256 <16 hex digits>``: the digest of the table without that column. Only a file whose every byte
# bioplaus wrote carries it; a table edited or made anew by hand does not, and is left alone.
CSV_MARK_COLUMN = "written_by"
CSV_MARK_LIMIT = 64 << 20  # a report's table is a few KB; a larger file there is not one of ours
_CSV_MARK_CELL = re.compile(r"bioplaus \S+, sha256 ([0-9a-f]{16})")


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _csv_digest(rows: Sequence[Sequence[str]]) -> str:
    return hashlib.sha256(_csv_text(rows).encode("utf-8")).hexdigest()[:16]


def csv_marked(text: str) -> bytes:
    """``text`` (a CSV with a header line) with the mark column added (see CSV_MARK_COLUMN)."""
    from bioplaus import __version__

    rows = _csv_rows(text)
    if len(rows) < 2:
        raise ValueError("a marked CSV needs a header and at least one row")
    cell = f"bioplaus {__version__}, sha256 {_csv_digest(rows)}"
    return _csv_text([rows[0] + [CSV_MARK_COLUMN]] + [row + [cell] for row in rows[1:]]).encode("utf-8")


def has_csv_mark(data: bytes) -> bool:
    """True when ``data`` is a whole CSV that :func:`csv_marked` wrote, unchanged."""
    try:
        rows = _csv_rows(data.decode("utf-8"))
    except (UnicodeDecodeError, csv.Error):
        return False
    if len(rows) < 2 or rows[0][-1:] != [CSV_MARK_COLUMN] or any(not row for row in rows):
        return False
    cells = {row[-1] for row in rows[1:]}
    found = _CSV_MARK_CELL.fullmatch(cells.pop()) if len(cells) == 1 else None
    return found is not None and found.group(1) == _csv_digest([row[:-1] for row in rows])


class TailMark(bytes):
    """A mark that its format writes at the end of the file, where it is looked for (the last
    ``_TAIL_BYTES``): a PDF's document information dictionary follows its pages."""


PDF_MARK = TailMark(b"/Creator (" + PNG_SOFTWARE.encode() + b" ")  # matplotlib writes the info dictionary last
_TAIL_BYTES = 1 << 16  # a PDF's cross-reference table (20 bytes an object) sits between its info and its end
PNG_MARKS = (PNG_MARK,)
TEXT_MARKS = (TEXT_MARK.encode(),)  # Markdown, and SVG (a comment after the XML declaration)
PDF_MARKS = (PDF_MARK,)
FIGURE_MARKS = {"png": PNG_MARKS, "svg": TEXT_MARKS, "pdf": PDF_MARKS}  # by format (figure_bytes writes them)
CSV_MARKS = (has_csv_mark,)


@dataclass(frozen=True)
class Output:
    """A file a command writes: its path, its bytes, and the marks that show an existing file there is
    an earlier output of bioplaus (and may be replaced): bytes looked for in the file's head, or a test
    of its whole content."""

    path: str
    data: bytes
    marks: tuple[bytes | Callable[[bytes], bool], ...]

    @classmethod
    def png(cls, path: str, data: bytes) -> Output:
        """A figure (``data`` from :func:`bioplaus.analysis.figure_png`, which writes the mark)."""
        return cls(path, data, PNG_MARKS)

    @classmethod
    def figure(cls, path: str, data: bytes, fmt: str) -> Output:
        """A figure in ``fmt`` (png, svg, pdf; ``data`` from :func:`bioplaus.analysis.figure_bytes`, which
        writes the mark)."""
        return cls(path, data, FIGURE_MARKS[fmt])

    @classmethod
    def markdown(cls, path: str, command: str, text: str) -> Output:
        """A Markdown table, its first line the mark naming ``command``."""
        return cls(path, (text_mark(command) + text).encode(), TEXT_MARKS)

    @classmethod
    def csv(cls, path: str, text: str, legacy: Sequence[Callable[[bytes], bool]] = ()) -> Output:
        """A CSV table (a header line, then rows), with the mark column added (:func:`csv_marked`).
        ``legacy``: tests that recognise the unmarked files an earlier bioplaus wrote there."""
        return cls(path, csv_marked(text), (*CSV_MARKS, *legacy))


def check_outputs(targets: Sequence[tuple[str, Sequence[bytes | Callable[[bytes], bool]]]], flag: str,
                  probe: bool = True) -> None:
    """Raise :class:`PathError` unless every ``(path, marks)`` can be written: its folder exists and is
    writable or can be made, and nothing is at the path or a regular file that carries a mark. The
    checks that read come first; with ``probe``, each folder is then tried for real (:func:`probe_folder`),
    once, last."""
    first_in = {}
    for path, _ in targets:
        first_in.setdefault(os.path.dirname(os.path.abspath(path)), path)
    for path in first_in.values():
        check_folder_writable(path, flag)
    for path, marks in targets:
        ok = regular_file(path)
        if ok is None:
            continue
        if ok is False:
            raise PathError(f"{path} is {_kind(os.lstat(path).st_mode)}, where {flag} would write a file; "
                            "bioplaus leaves it alone")
        try:
            marked = _carries(path, marks, flag)
        except OSError as exc:
            raise PathError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
        if not marked:
            raise PathError(f"{path} was not written by bioplaus, and {flag} would replace it; move it away "
                            f"or choose another {flag}")
    if probe:
        for path in first_in.values():
            probe_folder(path, flag)


def _carries(path: str, marks: Sequence[bytes | Callable[[bytes], bool]], flag: str) -> bool:
    """Whether the file holds one of ``marks`` where its format puts it: in its head, for a
    :class:`TailMark` in its tail, and for a test (a CSV's) in its whole content. The file is opened
    without following a link or blocking (:func:`open_regular`)."""
    fd = open_regular(path, os.O_RDONLY, f"a file {flag} may replace")
    with os.fdopen(fd, "rb") as fh:
        whole = fh.read(CSV_MARK_LIMIT + 1) if any(callable(m) for m in marks) else b""
        fh.seek(0)
        head = fh.read(_HEAD_BYTES)
        tail = b""
        if any(isinstance(m, TailMark) for m in marks):
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read(_TAIL_BYTES)
    return any(m(whole) if callable(m) else m in (tail if isinstance(m, TailMark) else head) for m in marks)


def write_outputs(outputs: Sequence[Output], flag: str) -> list[str]:
    """Check every output (:func:`check_outputs`), then write each atomically (:func:`atomic_write`);
    returns the paths. A storage failure leaves each file whole: the old one or the new one."""
    check_outputs([(o.path, o.marks) for o in outputs], flag)
    folders = list(dict.fromkeys(os.path.dirname(os.path.abspath(o.path)) for o in outputs))
    for folder in folders:  # room for all of them, before any folder or file is made
        ensure_space(os.path.join(_existing_ancestor(folder), "*"), sum(len(o.data) for o in outputs))
    made: list[str] = []
    try:
        for folder in folders:
            made = make_folders(folder) + made  # innermost first across folders too
    except OSError:
        remove_folders(made)
        raise
    for o in outputs:
        atomic_write(o.path, lambda fh, data=o.data: fh.write(data), needed=len(o.data))
    return [o.path for o in outputs]
