"""The one place uploaded files and prepared datasets touch the disk.

Every byte goes through :class:`BlobStore`, so encryption at rest plugs in here: pass a
cipher (``shared.crypto.DataCipher``) and nothing else changes. Blobs are written and read as
streams (``writer``, ``open``), sealed a chunk at a time (``TFE3``): a 1 GiB upload or
prepared split never sits whole in memory. Older whole-blob forms (``TFE1``/``TFE2``) still
open. Every read and write names the tenant the blob belongs to: an encrypted blob is
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from shared.crypto import SealingWriter, is_sealed, reader_over
from shared.durable import make_dirs, replace_durably
from shared.errors import NotFound

TMP_PREFIX = ".tmp-"
_KEY_RE = re.compile(r"^[a-z]+(/[A-Za-z0-9._-]+)+$")


class Cipher(Protocol):
    def encrypt(self, data: bytes, context: bytes = b"") -> bytes: ...

    def decrypt(self, blob: bytes, context: bytes = b"") -> bytes: ...

    def needs_rewrap(self, blob: bytes) -> bool: ...

    def sealing_writer(self, dst: BinaryIO, context: bytes = b"") -> SealingWriter: ...

    def open_stream(self, src: BinaryIO, context: bytes = b"") -> Iterator[bytes]: ...


def blob_context(tenant: str, key: str) -> bytes:
    """What an encrypted blob is bound to: its tenant and its key (record id and purpose)."""
    return b"tunefleet-blob\0" + tenant.encode() + b"\0" + key.encode()


COPY_CHUNK = 1 << 20


class StoredBlob:
    """A stored, encrypted blob as a preparation source: each :meth:`open_binary` is a new
    decrypting stream (read it by line or in chunks; never whole)."""

    def __init__(self, store: BlobStore, key: str, tenant: str) -> None:
        self.store, self.key, self.tenant = store, key, tenant

    def open_binary(self) -> BinaryIO:
        return self.store.open(self.key, tenant=self.tenant)


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

    @contextmanager
    def writer(self, key: str, *, tenant: str) -> Iterator[BinaryIO]:
        """Write ``tenant``'s blob ``key`` as a stream: sealed chunk by chunk when encrypted,
        in place atomically (and durably) when the block ends without an error."""
        path = self._path(key)
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                if self.cipher is None:
                    yield fh
                else:
                    sealer = self.cipher.sealing_writer(fh, blob_context(tenant, key))
                    yield sealer  # type: ignore[misc]
                    sealer.finish()
            replace_durably(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes, *, tenant: str) -> None:
        """Store ``tenant``'s ``data`` under ``key`` (replacing it atomically)."""
        with self.writer(key, tenant=tenant) as out:
            out.write(data)

    def put_file(self, key: str, src: Path, *, tenant: str) -> None:
        """Store the file ``src`` under ``key``, consuming it: renamed into place when it is
        on the store's filesystem and nothing is encrypted, else sealed a chunk at a time."""
        if self.cipher is not None:
            with src.open("rb") as fh, self.writer(key, tenant=tenant) as out:
                while chunk := fh.read(COPY_CHUNK):
                    out.write(chunk)
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
        """The whole blob (small ones: a large one is read through :meth:`open`)."""
        with self.open(key, tenant=tenant) as fh:
            return fh.read()

    def open(self, key: str, *, tenant: str) -> BinaryIO:
        """``tenant``'s blob ``key`` as a binary stream, decrypted a chunk at a time."""
        path = self._path(key)
        try:
            fh = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"stored object {key} is missing", code="blob_missing") from None
        if self.cipher is None:
            return fh
        chunks = self.cipher.open_stream(fh, blob_context(tenant, key))
        return reader_over(_closing(chunks, fh))

    def chunks(self, key: str, *, tenant: str) -> Iterator[bytes]:
        """The blob in chunks, for a streamed answer. The first chunk is read at once, so a
        missing blob or one that does not decrypt (another record's, another key's) raises
        here, before the answer starts; a later bad chunk cuts the stream."""
        fh = self.open(key, tenant=tenant)
        try:
            first = fh.read(COPY_CHUNK)
        except BaseException:
            fh.close()
            raise
        return _chunks_from(first, fh)

    def source(self, key: str, *, tenant: str) -> Path | StoredBlob:
        """What a reader of ``key`` gets: the file itself when nothing is encrypted, else a
        :class:`StoredBlob` that opens a decrypting stream (read either line by line)."""
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"stored object {key} is missing", code="blob_missing")
        return path if self.cipher is None else StoredBlob(self, key, tenant)

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
        with path.open("rb") as fh:
            head = fh.read(64)
        if not self.cipher.needs_rewrap(head):
            return False
        context = blob_context(tenant, key)
        with path.open("rb") as fh, self.writer(key, tenant=tenant) as out:
            if is_sealed(head):
                for chunk in (old or self.cipher).open_stream(fh, context):
                    out.write(chunk)
            else:
                while chunk := fh.read(COPY_CHUNK):
                    out.write(chunk)
        return True


def _chunks_from(first: bytes, fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        if first:
            yield first
        while chunk := fh.read(COPY_CHUNK):
            yield chunk


def _closing(chunks: Iterator[bytes], fh: BinaryIO) -> Iterator[bytes]:
    """``chunks``, closing ``fh`` once they are exhausted or abandoned."""
    with fh:
        yield from chunks
