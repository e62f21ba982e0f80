"""Encryption at rest for tenant data (uploaded files, prepared datasets).

``DataCipher`` seals blobs with AES-256-GCM. Blob layout::

    b"TFE2" | key id (8 bytes) | nonce (12 bytes) | ciphertext + 16-byte tag

The header and a *context* (the caller's name for the blob: the training store passes the
tenant and the blob's key, e.g. ``files/<id>``) are the associated data, so a sealed blob
opens only under the name it was sealed for: copied to another tenant's record or another
purpose it fails authentication, as tampered bytes do. The context is not stored; the reader
must know it. ``TFE1`` blobs (before the context) authenticated the header only: they still
open, under any context, and ``rewrap`` (``needs_rewrap``) reseals them as ``TFE2``.

The key id is the first 8 bytes of SHA-256 of the key, so a blob names the key that sealed
it without revealing it. The first configured key encrypts; every configured key decrypts,
which is how keys rotate: add the new key first, ``rewrap`` the stored files, drop the old
key. Keys come from ``TUNEFLEET_DATA_KEYS`` (comma-separated base64 of 32 bytes); unset means
no encryption, and ``DataCipher.from_settings`` then returns None.

``TFE3`` is the streamed (chunked) form the training store writes, so a file of any size is
sealed and opened a chunk at a time, never whole in memory::

    b"TFE3" | key id (8) | base nonce (12) | chunk size (4, big-endian) | chunk 0 | chunk 1 | …

Each chunk is ``chunk size`` bytes of plaintext (the last one fewer, possibly none) sealed
with AES-256-GCM on its own: nonce = base nonce XOR the chunk's index; associated data = the
header, the context, the index (8 bytes) and a final flag (1 byte). A chunk moved to another
place fails (its index is bound), a stream cut at a chunk boundary fails (its new last chunk
was not sealed as final), bytes appended after the final chunk fail (it is then not read as
the last), a stream copied to another record fails (the context). ``decrypt`` opens all three
forms whole; :meth:`DataCipher.open_stream` yields a ``TFE3`` blob's chunks one by one (older
blobs: whole, in one piece). ``TFE1``/``TFE2`` blobs are not migrated: they still open.

``python -m shared.crypto rotate --old-keys … --new-keys … PATH…`` rewraps files in place.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.durable import replace_durably
from shared.errors import InternalError, InvalidRequest

MAGIC = b"TFE2"
LEGACY_MAGIC = b"TFE1"  # header-only associated data: not bound to a context
KEY_ID_LEN = 8
NONCE_LEN = 12
HEADER_LEN = len(MAGIC) + KEY_ID_LEN + NONCE_LEN
KEYS_ENV = "TUNEFLEET_DATA_KEYS"
STREAM_MAGIC = b"TFE3"
STREAM_HEADER_LEN = HEADER_LEN + 4
STREAM_CHUNK = 1 << 20
MAX_STREAM_CHUNK = 64 << 20
TAG_LEN = 16


class DecryptionError(InternalError):
    """A stored blob cannot be opened: unknown key, tampered bytes, or not a sealed blob.

    An InternalError (500, logged): it means lost keys or corrupted storage, never bad input.
    """

    code = "decryption_failed"


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:KEY_ID_LEN]


def parse_keys(text: str, *, param: str = KEYS_ENV) -> list[bytes]:
    """Comma-separated base64 keys (32 bytes each) → bytes; errors name ``param``."""
    keys = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{param}: key {i + 1} is not valid base64", param=param) from None
        if len(key) != 32:
            raise InvalidRequest(
                f"{param}: key {i + 1} is {len(key)} bytes, AES-256 needs 32", param=param
            )
        keys.append(key)
    return keys


def is_sealed(blob: bytes) -> bool:
    """Whether ``blob`` (or its first 64 bytes) starts like a sealed blob of any form."""
    if blob.startswith(STREAM_MAGIC):
        return len(blob) >= STREAM_HEADER_LEN + TAG_LEN
    return blob[: len(MAGIC)] in (MAGIC, LEGACY_MAGIC) and len(blob) >= HEADER_LEN + TAG_LEN


def _chunk_nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(NONCE_LEN, "big")


def _chunk_aad(header: bytes, context: bytes, index: int, final: bool) -> bytes:
    return _associated_data(header, context) + index.to_bytes(8, "big") + bytes([final])


class SealingWriter:
    """A writable stream sealing what is written as ``TFE3`` chunks into ``dst``; call
    :meth:`finish` to seal the last chunk (until then the blob does not open)."""

    def __init__(self, aead: AESGCM, kid: bytes, dst: BinaryIO, context: bytes, chunk: int):
        self._aead, self._dst, self._context, self._chunk = aead, dst, context, chunk
        self._base = os.urandom(NONCE_LEN)
        self._header = STREAM_MAGIC + kid + self._base + chunk.to_bytes(4, "big")
        self._buf = bytearray()
        self._index = 0
        dst.write(self._header)

    def write(self, data: bytes) -> int:
        self._buf += data
        # strictly more than a chunk: the last chunk (sealed as final) is never empty unless
        # the whole stream is
        while len(self._buf) > self._chunk:
            self._seal(bytes(self._buf[: self._chunk]), final=False)
            del self._buf[: self._chunk]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._buf), final=True)
        self._buf.clear()

    def _seal(self, plain: bytes, *, final: bool) -> None:
        aad = _chunk_aad(self._header, self._context, self._index, final)
        self._dst.write(self._aead.encrypt(_chunk_nonce(self._base, self._index), plain, aad))
        self._index += 1


class _ChunkReader(io.RawIOBase):
    """A raw readable over an iterator of byte chunks (wrap in ``io.BufferedReader``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._left = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def reader_over(chunks: Iterator[bytes]) -> BinaryIO:
    """A buffered binary file over ``chunks`` (iterable by line, ``read(n)``)."""
    return io.BufferedReader(_ChunkReader(chunks), STREAM_CHUNK)  # type: ignore[return-value]


def _associated_data(header: bytes, context: bytes) -> bytes:
    if header.startswith(LEGACY_MAGIC):
        return header
    # the length prefix keeps (header, context) pairs from colliding
    return header + len(context).to_bytes(4, "big") + context


class DataCipher:
    """AES-GCM sealing with a key ring: ``keys[0]`` encrypts, any key decrypts."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise InvalidRequest("DataCipher needs at least one key", param=KEYS_ENV)
        for key in keys:
            if len(key) != 32:
                raise InvalidRequest("data keys must be 32 bytes (AES-256)", param=KEYS_ENV)
        self._primary = bytes(keys[0])
        self._ring = {key_id(k): AESGCM(bytes(k)) for k in keys}

    @classmethod
    def from_settings(cls, value: str | None = None) -> DataCipher | None:
        """The cipher for ``value`` (default: the ``TUNEFLEET_DATA_KEYS`` variable), or None
        when no key is configured (encryption at rest off)."""
        text = os.environ.get(KEYS_ENV, "") if value is None else value
        keys = parse_keys(text)
        return cls(keys) if keys else None

    @property
    def primary_key_id(self) -> bytes:
        return key_id(self._primary)

    def encrypt(self, data: bytes, context: bytes = b"") -> bytes:
        """Seal ``data`` under the primary key with a fresh random nonce, bound to
        ``context`` (it must be given again to decrypt)."""
        kid = key_id(self._primary)
        nonce = os.urandom(NONCE_LEN)
        header = MAGIC + kid + nonce
        # The header is authenticated too: a blob cannot be relabelled to another key.
        return header + self._ring[kid].encrypt(nonce, data, _associated_data(header, context))

    def sealing_writer(
        self, dst: BinaryIO, context: bytes = b"", chunk: int = STREAM_CHUNK
    ) -> SealingWriter:
        """Seal what is written to the returned stream into ``dst`` as ``TFE3`` chunks, bound
        to ``context``; its ``finish()`` seals the last chunk."""
        kid = key_id(self._primary)
        return SealingWriter(self._ring[kid], kid, dst, context, chunk)

    def open_stream(self, src: BinaryIO, context: bytes = b"") -> Iterator[bytes]:
        """The plaintext of the sealed blob read from ``src``, a chunk at a time (``TFE1`` and
        ``TFE2`` blobs: read and opened whole). Raises DecryptionError at the first chunk
        that does not open (so a consumer may have seen the chunks before it)."""
        head = src.read(len(STREAM_MAGIC))
        if head != STREAM_MAGIC:
            yield self.decrypt(head + src.read(), context)
            return
        header = head + src.read(STREAM_HEADER_LEN - len(head))
        aead = self._aead_for(header)
        base, chunk = header[HEADER_LEN - NONCE_LEN : HEADER_LEN], int.from_bytes(header[-4:])
        if len(header) < STREAM_HEADER_LEN or not 0 < chunk <= MAX_STREAM_CHUNK:
            raise DecryptionError("data is not an encrypted tunefleet blob (bad chunk header)")
        size, index = chunk + TAG_LEN, 0
        current = src.read(size)
        while True:
            following = src.read(size) if len(current) == size else b""
            final = not following
            try:
                nonce = _chunk_nonce(base, index)
                yield aead.decrypt(nonce, current, _chunk_aad(header, context, index, final))
            except InvalidTag:
                raise DecryptionError(
                    f"data sealed with key {header[4:12].hex()} failed authentication at chunk "
                    f"{index} (tampered, truncated, reordered, or sealed for another record)"
                ) from None
            if final:
                return
            current, index = following, index + 1

    def _aead_for(self, header: bytes) -> AESGCM:
        if not is_sealed(header + bytes(TAG_LEN)):
            raise DecryptionError("data is not an encrypted tunefleet blob (missing header)")
        kid = header[len(MAGIC) : len(MAGIC) + KEY_ID_LEN]
        aead = self._ring.get(kid)
        if aead is None:
            raise DecryptionError(
                f"data was encrypted with key {kid.hex()}, which is not configured in {KEYS_ENV}"
            )
        return aead

    def decrypt(self, blob: bytes, context: bytes = b"") -> bytes:
        """Open a sealed blob; raise DecryptionError (never garbage) when that is impossible,
        including a ``context`` other than the one it was sealed with (``TFE1`` blobs: any)."""
        if not is_sealed(blob):
            raise DecryptionError("data is not an encrypted tunefleet blob (missing header)")
        if blob.startswith(STREAM_MAGIC):
            return b"".join(self.open_stream(io.BytesIO(blob), context))
        kid = blob[len(MAGIC) : len(MAGIC) + KEY_ID_LEN]
        aead = self._aead_for(blob[:HEADER_LEN])
        header, body = blob[:HEADER_LEN], blob[HEADER_LEN:]
        try:
            return aead.decrypt(header[-NONCE_LEN:], body, _associated_data(header, context))
        except InvalidTag:
            raise DecryptionError(
                f"data sealed with key {kid.hex()} failed authentication (tampered, truncated, "
                "or sealed for another record)"
            ) from None

    def needs_rewrap(self, blob: bytes) -> bool:
        """Not sealed, sealed without a context (``TFE1``), or under another key (``blob``
        may be just the first 64 bytes). ``TFE2`` blobs stay as they are."""
        return (
            not is_sealed(blob)
            or blob.startswith(LEGACY_MAGIC)
            or blob[len(MAGIC) : len(MAGIC) + KEY_ID_LEN] != self.primary_key_id
        )


def rewrap(
    paths: Iterable[Path],
    old: DataCipher | None,
    new: DataCipher | None,
    context: Callable[[Path], bytes] | None = None,
) -> int:
    """Re-encrypt each file from ``old`` to ``new`` in place; returns how many changed.

    ``context(path)``: the context each file is (to be) sealed for; none means the empty
    context (files of the training store have their own: ``services.training.storage.rekey``).

    ``old`` None means the files are plaintext (turning encryption on); ``new`` None decrypts
    (turning it off). Each file is replaced atomically (temp file + fsync + rename), so a
    crash mid-rotation leaves every file readable with either the old or the new key ring.
    Files already in the target form are skipped, so a rerun resumes where one stopped.
    """
    changed = 0
    for path in paths:
        blob = path.read_bytes()
        if new is not None and is_sealed(blob) and not new.needs_rewrap(blob):
            continue
        if new is None and not is_sealed(blob):
            continue  # already plaintext
        ctx = context(path) if context is not None else b""
        plain = old.decrypt(blob, ctx) if old is not None else blob
        out = new.encrypt(plain, ctx) if new is not None else plain
        tmp = path.with_name(f".{path.name}.rewrap")
        tmp.write_bytes(out)
        replace_durably(tmp, path)
        changed += 1
    return changed


def _files(targets: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for t in targets:
        p = Path(t)
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m shared.crypto rotate --old-keys K1 --new-keys K2,K1 PATH...``."""
    parser = argparse.ArgumentParser(prog="python -m shared.crypto")
    sub = parser.add_subparsers(dest="command", required=True)
    rot = sub.add_parser("rotate", help="re-encrypt files under the new primary key")
    rot.add_argument("--old-keys", default="", help="key ring the files are sealed with now")
    rot.add_argument("--new-keys", default="", help="key ring to seal with (first key used)")
    rot.add_argument("paths", nargs="+", help="files or directories (recursed)")
    sub.add_parser("genkey", help="print a new random base64 key")
    args = parser.parse_args(argv)
    if args.command == "genkey":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    try:
        old = DataCipher.from_settings(args.old_keys)
        new = DataCipher.from_settings(args.new_keys)
        files = _files(args.paths)
        n = rewrap(files, old, new)
    except (InvalidRequest, DecryptionError) as exc:
        print(f"rotate failed: {exc.message}", file=sys.stderr)
        return 2
    print(f"rewrapped {n} of {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
