"""The one place uploaded files and prepared datasets touch the disk.

Every byte goes through :class:`BlobStore`, so encryption at rest plugs in here: pass a
cipher (``shared.crypto.DataCipher``: ``encrypt``/``decrypt`` of whole blobs) and nothing
else changes. Every read and write names the tenant the blob belongs to: an encrypted blob is
sealed for (tenant, key) (:func:`blob_context`), so bytes copied under another tenant's or
another record's key fail to decrypt instead of being served as theirs.

Writes are atomic (temp file + rename) and durable before they return (the file and its
directory fsynced, ``shared.durable``: a power cut after the request was acknowledged keeps
the blob its database row names). Keys are plain relative names made by the domain code
(``files/<id>``, ``datasets/<id>/train.jsonl``), never user input.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

from shared.crypto import is_sealed
from shared.durable import make_dirs, replace_durably
from shared.errors import NotFound

TMP_PREFIX = ".tmp-"
_KEY_RE = re.compile(r"^[a-z]+(/[A-Za-z0-9._-]+)+$")


class Cipher(Protocol):
    def encrypt(self, data: bytes, context: bytes = b"") -> bytes: ...

    def decrypt(self, blob: bytes, context: bytes = b"") -> bytes: ...

    def needs_rewrap(self, blob: bytes) -> bool: ...


def blob_context(tenant: str, key: str) -> bytes:
    """What an encrypted blob is bound to: its tenant and its key (record id and purpose)."""
    return b"tunefleet-blob\0" + tenant.encode() + b"\0" + key.encode()


class BlobStore:
    """Small whole-object store under ``root``; optionally encrypted at rest."""

    def __init__(self, root: Path, cipher: Cipher | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cipher = cipher

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key) or ".." in key:
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, tenant: str) -> None:
        """Store ``tenant``'s ``data`` under ``key`` (replacing it atomically)."""
        path = self._path(key)
        make_dirs(path.parent)
        blob = self.cipher.encrypt(data, blob_context(tenant, key)) if self.cipher else data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            replace_durably(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, src: Path, *, tenant: str) -> None:
        """Store the file ``src`` under ``key``, consuming it: renamed into place when it is
        on the store's filesystem and nothing is encrypted (no copy, nothing in memory)."""
        if self.cipher is not None:
            self.put(key, src.read_bytes(), tenant=tenant)  # the cipher seals whole blobs
            src.unlink(missing_ok=True)
            return
        path = self._path(key)
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        os.close(fd)
        try:
            shutil.move(src, tmp)
            replace_durably(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def staging_dir(self) -> Path:
        """Where uploads are spooled before they are stored (same filesystem: a rename).
        Crash leftovers carry ``TMP_PREFIX`` and go in :meth:`sweep_partial`."""
        path = self.root / "staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sweep_partial(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files of writes a crash (kill -9, power loss) cut short; they are never
        read (a blob appears only by rename). Only old ones: another process sharing the store
        may be writing right now. Returns how many went."""
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.rglob(f"{TMP_PREFIX}*"):
            try:
                if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def get(self, key: str, *, tenant: str) -> bytes:
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"stored object {key} is missing", code="blob_missing") from None
        return self.cipher.decrypt(blob, blob_context(tenant, key)) if self.cipher else blob

    def source(self, key: str, *, tenant: str) -> bytes | Path:
        """What a reader of ``key`` gets: the file itself when nothing is encrypted (read it
        line by line, never whole), else the decrypted bytes (the cipher seals whole blobs)."""
        if self.cipher is not None:
            return self.get(key, tenant=tenant)
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"stored object {key} is missing", code="blob_missing")
        return path

    def delete(self, key: str) -> None:
        """Remove ``key`` (a file or a folder of keys); missing is fine."""
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def rewrap(self, key: str, *, tenant: str, old: Cipher | None) -> bool:
        """Reseal ``key`` with this store's cipher, bound to (tenant, key): blobs sealed before
        the binding (``TFE1``), under an older key (``old`` must hold it) or in plaintext
        (``old`` None). False when there was nothing to do (missing or already current)."""
        path = self._path(key)
        if self.cipher is None or not path.is_file():
            return False
        blob = path.read_bytes()
        if not self.cipher.needs_rewrap(blob):
            return False
        if is_sealed(blob):
            plain = (old or self.cipher).decrypt(blob, blob_context(tenant, key))
        else:
            plain = blob
        self.put(key, plain, tenant=tenant)
        return True
