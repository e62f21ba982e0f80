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

``python -m shared.crypto rotate --old-keys … --new-keys … PATH…`` rewraps files in place.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

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
    return blob[: len(MAGIC)] in (MAGIC, LEGACY_MAGIC) and len(blob) >= HEADER_LEN + 16


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

    def decrypt(self, blob: bytes, context: bytes = b"") -> bytes:
        """Open a sealed blob; raise DecryptionError (never garbage) when that is impossible,
        including a ``context`` other than the one it was sealed with (``TFE1`` blobs: any)."""
        if not is_sealed(blob):
            raise DecryptionError("data is not an encrypted tunefleet blob (missing header)")
        kid = blob[len(MAGIC) : len(MAGIC) + KEY_ID_LEN]
        aead = self._ring.get(kid)
        if aead is None:
            raise DecryptionError(
                f"data was encrypted with key {kid.hex()}, which is not configured in {KEYS_ENV}"
            )
        header, body = blob[:HEADER_LEN], blob[HEADER_LEN:]
        try:
            return aead.decrypt(header[-NONCE_LEN:], body, _associated_data(header, context))
        except InvalidTag:
            raise DecryptionError(
                f"data sealed with key {kid.hex()} failed authentication (tampered, truncated, "
                "or sealed for another record)"
            ) from None

    def needs_rewrap(self, blob: bytes) -> bool:
        """Not sealed, sealed without a context (``TFE1``), or under another key."""
        return (
            not is_sealed(blob)
            or not blob.startswith(MAGIC)
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
