"""Bounds on what a reader believes: crafted files are refused before they cost memory or a crash.

A file can declare more than it holds: an HDF5 dataset of shape (2**40,) whose chunks were never
written, an ``.npz`` member whose header asks for terabytes behind a few bytes of deflate, an IDX
header that promises 1.4 million images in a 1 MB gzip, a JSON text nested ten thousand levels
deep. Reading any of them as it declares itself ends in a MemoryError, a RecursionError or a
machine swapping, long after the user could have been told in one sentence. So every reader
checks what a file declares before reading it:

- :func:`check_declared`: the bytes a reader would allocate must fit the host's available memory
  (:func:`host_memory`), or a smaller limit the reader knows (an IDX file of a registered dataset
  has an exact size);
- :func:`loads`: JSON that bioplaus reads from files (a log's configuration, a checkpoint's record,
  a line of ``sweeps.jsonl``) is at most :data:`JSON_MAX_CHARS` long and :data:`JSON_MAX_DEPTH` deep,
  both checked before the text is parsed (every document bioplaus writes is two levels deep).

Both raise :class:`TooLarge` (a ``ValueError``: every reader already turns those into its one
sentence).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

JSON_MAX_CHARS = 1 << 20  # a configuration is about 1 KB; a record of the sweep about 500 bytes
JSON_MAX_DEPTH = 16  # what bioplaus writes is 2 levels deep (a record holding a list)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets


class TooLarge(ValueError):
    """A file declares more than a reader will take; ``str(e)`` is the end of a sentence."""


def host_memory() -> int:
    """Bytes of host memory available now (Linux's MemAvailable; else the physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def human(n: float) -> str:
    """``1.5 GiB``: a byte count for a message."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns


def check_declared(nbytes: int, what: str, limit: int | None = None) -> None:
    """Raise :class:`TooLarge` when reading ``what`` would allocate ``nbytes``: more than ``limit``
    (when the reader knows one) or than the host has available."""
    if limit is not None and nbytes > limit:
        raise TooLarge(f"{what} declares {human(nbytes)} of data, more than the {human(limit)} it can hold")
    available = host_memory()
    if nbytes > available:
        raise TooLarge(f"{what} declares {human(nbytes)} of data, more than the {human(available)} of memory "
                       "this machine has available")


def json_depth(text: str) -> int:
    """How deeply ``text`` nests arrays and objects (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def loads(text: str | bytes, what: str) -> Any:
    """``json.loads(text)`` after checking its length and depth; ValueError (one phrase naming ``what``)
    for text that is too long, too deep or not JSON."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8 text") from None
    if len(text) > JSON_MAX_CHARS:
        raise TooLarge(f"{what} is {len(text):,} characters long, more than the {JSON_MAX_CHARS:,} bioplaus reads")
    if json_depth(text) > JSON_MAX_DEPTH:
        raise TooLarge(f"{what} nests deeper than {JSON_MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON ({exc.__class__.__name__})") from None
