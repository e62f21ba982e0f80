"""Durable file writes: an acknowledged write survives a power cut, not just a crash.

A rename is atomic but not durable by itself: the file's bytes and the directory entry the
rename made both sit in the page cache until the kernel writes them back (up to ~30 s), so a
request acknowledged in that window could lose its blob after a power cut while the database
row that names it (committed with ``synchronous=FULL``, ``shared.db``) survives. Every blob
store therefore fsyncs the file before the rename and the directory after it, before it
returns.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's bytes (or a directory's entries) to stable storage."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that makes each directory it creates durable (its entry in its parent)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_path(d.parent)


def replace_durably(tmp: Path | str, dest: Path) -> None:
    """Move the written-and-closed file ``tmp`` to ``dest`` so it survives a power cut:
    fsync its bytes, rename (atomic), fsync the directory holding the new entry."""
    fsync_path(Path(tmp))
    os.replace(tmp, dest)
    fsync_path(dest.parent)
