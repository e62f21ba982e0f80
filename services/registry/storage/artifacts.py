"""Content-addressed artifact store.

Blobs live at ``<root>/sha256/ab/cdef…``: written to a temp file in the same directory tree,
fsynced and renamed (atomic: a crash never leaves a partial blob under its final name), the
directory fsynced too before ``put_file`` returns (durable: a power cut after the push was
acknowledged keeps the blob; ``shared.durable``),
deduplicated by hash, and verified on read. ``ArtifactStore`` is the seam for S3-compatible
storage later.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from shared.durable import fsync_path, make_dirs, replace_durably
from shared.errors import InternalError, NotFound

CHUNK = 1 << 20


class ArtifactStore(Protocol):
    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a file's bytes; returns (sha256, size). Idempotent for equal content."""

    def open(self, sha256: str) -> BinaryIO:
        """Open a verified blob for reading."""

    def path(self, sha256: str) -> Path:
        """Local path of a blob (FS stores only; others download to a cache)."""

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise NotFound("no such artifact", code="artifact_not_found")
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def staging_dir(self) -> Path:
        """A scratch directory on the same filesystem (renames stay atomic)."""
        return self.root / "tmp"

    def put_file(self, src: Path) -> tuple[str, int]:
        digest = sha256_file(src)
        dest = self.path(digest)
        size = src.stat().st_size
        if dest.exists() and dest.stat().st_size == size:
            fsync_path(dest.parent)  # a concurrent push may not have synced its entry yet
            return digest, size
        make_dirs(dest.parent)
        fd, tmp_name = tempfile.mkstemp(dir=self.staging_dir(), prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                while chunk := inp.read(CHUNK):
                    out.write(chunk)
            replace_durably(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest, size

    def open(self, sha256: str) -> BinaryIO:
        path = self.path(sha256)
        if not path.exists():
            raise NotFound("artifact missing from the store", code="artifact_not_found")
        if sha256_file(path) != sha256:
            raise InternalError(f"artifact {sha256[:12]} failed its integrity check")
        return path.open("rb")

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
