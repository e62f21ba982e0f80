"""The training blob store: atomic writes and the sweep of writes a crash cut short."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.training.storage.files import TMP_PREFIX, BlobStore


def test_put_is_atomic_and_a_failed_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exploding:
        def encrypt(self, data: bytes) -> bytes:
            return data

        def decrypt(self, blob: bytes) -> bytes:
            return blob

    store = BlobStore(tmp_path, Exploding())
    store.put("files/a", b"one")

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError):
        store.put("files/a", b"two")
    monkeypatch.undo()
    assert store.get("files/a") == b"one"
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_sweep_removes_only_old_partial_writes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    store.put("datasets/ds1/train.jsonl", b"{}\n")
    old = tmp_path / "datasets" / "ds1" / f"{TMP_PREFIX}crashed"
    fresh = tmp_path / "datasets" / "ds1" / f"{TMP_PREFIX}writing"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    assert store.sweep_partial(older_than_s=3600) == 1
    assert not old.exists() and fresh.exists()
    assert store.get("datasets/ds1/train.jsonl") == b"{}\n"
