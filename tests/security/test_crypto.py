"""Encryption at rest: AES-GCM blobs, key ring, rotation without data loss, clear errors."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.crypto import HEADER_LEN, DataCipher, DecryptionError, parse_keys, rewrap
from shared.errors import InvalidRequest


def k() -> bytes:
    return os.urandom(32)


def b64(*keys: bytes) -> str:
    return ",".join(base64.b64encode(x).decode() for x in keys)


def test_round_trip_and_fresh_nonce_per_blob() -> None:
    c = DataCipher([k()])
    data = b'{"prompt": "hello", "completion": "world"}\n' * 50
    a, b = c.encrypt(data), c.encrypt(data)
    assert a != b and data not in a
    assert c.decrypt(a) == data == c.decrypt(b)
    assert c.decrypt(c.encrypt(b"")) == b""


def test_wrong_key_is_a_clear_error_not_garbage() -> None:
    blob = DataCipher([k()]).encrypt(b"secret rows")
    with pytest.raises(DecryptionError) as exc:
        DataCipher([k()]).decrypt(blob)
    assert "not configured" in exc.value.message and exc.value.status == 500


@pytest.mark.parametrize("mutate", ["flip_body", "flip_header", "truncate", "plain"])
def test_tampered_or_unsealed_data_refused(mutate: str) -> None:
    c = DataCipher([k()])
    blob = bytearray(c.encrypt(b"x" * 100))
    if mutate == "flip_body":
        blob[-5] ^= 1
    elif mutate == "flip_header":
        blob[HEADER_LEN - 1] ^= 1  # the nonce is authenticated data
    elif mutate == "truncate":
        blob = blob[:-1]
    else:
        blob = bytearray(b"plain text, never encrypted")
    with pytest.raises(DecryptionError):
        c.decrypt(bytes(blob))


def test_key_ring_first_encrypts_all_decrypt() -> None:
    old, new = k(), k()
    sealed_old = DataCipher([old]).encrypt(b"before")
    ring = DataCipher([new, old])
    assert ring.decrypt(sealed_old) == b"before"
    assert DataCipher([new]).decrypt(ring.encrypt(b"after")) == b"after"


def test_from_settings_absent_means_off_and_bad_keys_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TUNEFLEET_DATA_KEYS", raising=False)
    assert DataCipher.from_settings() is None
    key = k()
    monkeypatch.setenv("TUNEFLEET_DATA_KEYS", b64(key))
    c = DataCipher.from_settings()
    assert c is not None and DataCipher([key]).decrypt(c.encrypt(b"v")) == b"v"
    for bad in ("not base64!!", base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidRequest) as exc:
            parse_keys(bad)
        assert exc.value.param == "TUNEFLEET_DATA_KEYS" and "key 1" in exc.value.message


def test_rotation_without_data_loss(tmp_path: Path) -> None:
    old_key, new_key = k(), k()
    old = DataCipher([old_key])
    payloads = {f"f{i}.jsonl": os.urandom(1000 + i) for i in range(5)}
    for name, data in payloads.items():
        (tmp_path / name).write_bytes(old.encrypt(data))
    new = DataCipher([new_key, old_key])
    assert rewrap(sorted(tmp_path.iterdir()), old, new) == 5
    assert rewrap(sorted(tmp_path.iterdir()), old, new) == 0  # rerun resumes: nothing left
    only_new = DataCipher([new_key])
    for name, data in payloads.items():
        assert only_new.decrypt((tmp_path / name).read_bytes()) == data
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_turn_encryption_on_and_off(tmp_path: Path) -> None:
    f = tmp_path / "plain.csv"
    f.write_bytes(b"a,b\n1,2\n")
    c = DataCipher([k()])
    assert rewrap([f], None, c) == 1 and c.decrypt(f.read_bytes()) == b"a,b\n1,2\n"
    assert rewrap([f], c, None) == 1 and f.read_bytes() == b"a,b\n1,2\n"
    assert rewrap([f], c, None) == 0


def test_rotate_cli(tmp_path: Path) -> None:
    old_key, new_key = k(), k()
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "data.bin"
    target.write_bytes(DataCipher([old_key]).encrypt(b"rows"))
    cmd = [sys.executable, "-m", "shared.crypto", "rotate"]
    ok = subprocess.run(
        [*cmd, "--old-keys", b64(old_key), "--new-keys", b64(new_key), str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "rewrapped 1 of 1" in ok.stdout
    assert DataCipher([new_key]).decrypt(target.read_bytes()) == b"rows"
    bad = subprocess.run(
        [*cmd, "--old-keys", b64(old_key), "--new-keys", b64(k()), str(target)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not configured" in bad.stderr
    assert DataCipher([new_key]).decrypt(target.read_bytes()) == b"rows"  # untouched
