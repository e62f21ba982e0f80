"""Encryption at rest for tenant data (uploaded files, prepared datasets).

``DataCipher`` seals blobs with AES-256-GCM. Blob layout::

    b"TFE1" | key id (8 bytes) | nonce (12 bytes) | ciphertext + 16-byte tag

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
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.durable import replace_durably
from shared.errors import InternalError, InvalidRequest

MAGIC = b"TFE1"
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
    return blob[: len(MAGIC)] == MAGIC and len(blob) >= HEADER_LEN + 16


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

    def encrypt(self, data: bytes) -> bytes:
        """Seal ``data`` under the primary key with a fresh random nonce."""
        kid = key_id(self._primary)
        nonce = os.urandom(NONCE_LEN)
        header = MAGIC + kid + nonce
        # The header is authenticated too: a blob cannot be relabelled to another key.
        return header + self._ring[kid].encrypt(nonce, data, header)

    def decrypt(self, blob: bytes) -> bytes:
        """Open a sealed blob; raise DecryptionError (never garbage) when that is impossible."""
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
            return aead.decrypt(header[-NONCE_LEN:], body, header)
        except InvalidTag:
            raise DecryptionError(
                f"data sealed with key {kid.hex()} failed authentication (tampered or truncated)"
            ) from None

    def needs_rewrap(self, blob: bytes) -> bool:
        return not is_sealed(blob) or blob[len(MAGIC) : len(MAGIC) + KEY_ID_LEN] != (
            self.primary_key_id
        )


def rewrap(paths: Iterable[Path], old: DataCipher | None, new: DataCipher | None) -> int:
    """Re-encrypt each file from ``old`` to ``new`` in place; returns how many changed.

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
        plain = old.decrypt(blob) if old is not None else blob
        out = new.encrypt(plain) if new is not None else plain
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
