"""The training blob store: atomic writes, uploads moved in, sources read line by line, and
the sweep of writes a crash cut short."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.training.storage.files import TMP_PREFIX, BlobStore
from shared.crypto import DataCipher
from shared.errors import NotFound


def test_put_is_atomic_and_a_failed_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path, DataCipher([os.urandom(32)]))
    store.put("files/a", b"one", tenant="acme")

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError):
        store.put("files/a", b"two", tenant="acme")
    monkeypatch.undo()
    assert store.get("files/a", tenant="acme") == b"one"
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_sweep_removes_only_old_partial_writes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.put("datasets/ds1/train.jsonl", b"{}\n", tenant="acme")
    old = tmp_path / "datasets" / "ds1" / f"{TMP_PREFIX}crashed"
    fresh = tmp_path / "datasets" / "ds1" / f"{TMP_PREFIX}writing"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    assert store.sweep_partial(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists()
    assert store.get("datasets/ds1/train.jsonl", tenant="acme") == b"{}\n"


def test_put_file_moves_and_source_is_the_file_unless_encrypted(tmp_path: Path) -> None:
    plain = BlobStore(tmp_path / "plain")
    src = plain.staging_dir() / f"{TMP_PREFIX}up"
    src.write_bytes(b"a\nb\n")
    plain.put_file("files/x", src, tenant="acme")
    assert not src.exists()  # moved, not copied
    assert plain.source("files/x", tenant="acme") == tmp_path / "plain" / "files" / "x"
    assert plain.get("files/x", tenant="acme") == b"a\nb\n"
    with pytest.raises(NotFound):
        plain.source("files/missing", tenant="acme")

    sealed = BlobStore(tmp_path / "sealed", DataCipher([os.urandom(32)]))
    src = sealed.staging_dir() / f"{TMP_PREFIX}up"
    src.write_bytes(b"secret\n")
    sealed.put_file("files/x", src, tenant="acme")
    assert not src.exists()
    assert b"secret" not in (tmp_path / "sealed" / "files" / "x").read_bytes()
    source = sealed.source("files/x", tenant="acme")
    assert not isinstance(source, Path | bytes)  # a decrypting stream, opened per pass
    with source.open_binary() as fh:
        assert list(fh) == [b"secret\n"]
