"""Reading an upload: streamed to a file on disk in chunks, never held whole in memory.

Every service route that accepts a file (training data, adapter archives, a job's result)
calls :func:`spool_upload`: the bytes go, 1 MiB at a time, into a private temp file while
their size and sha256 are counted; more than ``limit`` bytes is refused with 413 and the
error names the limit. Callers own the returned file and delete it (``SpooledUpload.unlink``
or a ``with`` block).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from shared.errors import PayloadTooLarge

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
"""The default cap of an upload route (1 GiB); each service sets its own in its settings."""
CHUNK_BYTES = 1 << 20


def describe_bytes(n: int) -> str:
    """``1073741824`` → ``"1073741824 bytes (1 GiB)"``: exact, and readable at a glance."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n} bytes ({n / size:.4g} {unit})"
    return f"{n} bytes"


def upload_too_large(limit: int, *, what: str, param: str, code: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} exceeds the upload limit of {describe_bytes(limit)}", param=param, code=code
    )


@dataclass(frozen=True)
class SpooledUpload:
    """An upload on disk: its path, size and sha256 (hex)."""

    path: Path
    size: int
    sha256: str

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SpooledUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unlink()


def spool_upload(
    source: BinaryIO,
    *,
    limit: int,
    dest_dir: Path | None = None,
    prefix: str = "upload-",
    suffix: str = "",
    what: str = "file",
    param: str = "file",
    code: str = "file_too_large",
) -> SpooledUpload:
    """Copy ``source`` in chunks into a new private file (in ``dest_dir``, else the system
    temp folder), refusing (413, ``code``) more than ``limit`` bytes. Blocking: call it from a
    worker thread in an async handler."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dest_dir)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise upload_too_large(limit, what=what, param=param, code=code)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return SpooledUpload(Path(name), size, digest.hexdigest())
