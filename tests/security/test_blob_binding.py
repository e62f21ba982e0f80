"""An encrypted blob opens only as the record it was sealed for (issue 18, low item
"encryption that does not bind a blob to its tenant and key").

AES-GCM sealed the bytes with the header as associated data only, so a blob copied onto
another tenant's record (or another record's key) decrypted fine and was served as theirs.
Now the associated data holds the tenant and the blob's key (``TFE2``): the copy fails to
decrypt (500 ``decryption_failed``, never the other tenant's bytes). Blobs sealed before
(``TFE1``) still open, and ``services.training.domain.rekey`` reseals them bound.

The training service runs for real (uploads, downloads through its routes, on disk), with a
registry app behind it in-process.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI

from services.training.domain.rekey import rekey_store
from shared.crypto import DataCipher, DecryptionError, key_id
from tests.security.test_durable_writes import TOKEN, _registry, _training

KEY = os.urandom(32)


def legacy_seal(key: bytes, data: bytes) -> bytes:
    """A blob as the cipher sealed it before this change (``TFE1``: header-only AAD)."""
    nonce = os.urandom(12)
    header = b"TFE1" + key_id(key) + nonce
    return header + AESGCM(key).encrypt(nonce, data, header)


def test_cipher_binds_the_context_and_still_opens_legacy_blobs() -> None:
    c = DataCipher([KEY])
    blob = c.encrypt(b"rows", b"acme/files/f1")
    assert c.decrypt(blob, b"acme/files/f1") == b"rows"
    for other in (b"globex/files/f1", b"acme/files/f2", b""):
        with pytest.raises(DecryptionError, match="another record"):
            c.decrypt(blob, other)
    old = legacy_seal(KEY, b"old rows")
    assert c.decrypt(old, b"anything") == b"old rows" and c.needs_rewrap(old)
    assert not c.needs_rewrap(blob)


@pytest.fixture
async def training(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    monkeypatch.setenv("TUNEFLEET_DATA_KEYS", base64.b64encode(KEY).decode())
    registry = _registry(tmp_path / "reg", model_dir)
    app = _training(tmp_path / "tr", registry)
    async with (
        LifespanManager(registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://training",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as http,
    ):
        yield http, app


def _rows(who: str) -> bytes:
    return b"".join(
        b'{"text": "%s row %d", "label": "positive"}\n' % (who.encode(), i) for i in range(20)
    )


async def _upload(http: httpx.AsyncClient, tenant: str) -> str:
    r = await http.post(
        "/v1/files",
        headers={"X-Tenant-Id": tenant},
        files={"file": ("t.jsonl", _rows(tenant), "application/octet-stream")},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


async def _content(http: httpx.AsyncClient, tenant: str, file_id: str) -> httpx.Response:
    return await http.get(f"/v1/files/{file_id}/content", headers={"X-Tenant-Id": tenant})


async def test_a_blob_copied_onto_another_record_does_not_decrypt(
    training: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    http, app = training
    store = app.state.training.store
    acme, acme2, globex = (
        await _upload(http, "acme"),
        await _upload(http, "acme"),
        await _upload(http, "globex"),
    )
    assert (await _content(http, "globex", globex)).content == _rows("globex")
    sealed_acme = (store.root / "files" / acme).read_bytes()
    for tenant, victim in (("globex", globex), ("acme", acme2)):  # other tenant, other record
        (store.root / "files" / victim).write_bytes(sealed_acme)
        r = await _content(http, tenant, victim)
        assert b"acme row" not in r.content, (tenant, r.status_code)
        assert r.status_code == 500 and r.json()["error"]["code"] == "decryption_failed"
    assert (await _content(http, "acme", acme)).content == _rows("acme")  # the original opens


async def test_legacy_blobs_still_open_and_rekey_binds_them(
    training: tuple[httpx.AsyncClient, FastAPI],
) -> None:
    http, app = training
    st = app.state.training
    acme, globex = await _upload(http, "acme"), await _upload(http, "globex")
    for file_id, tenant in ((acme, "acme"), (globex, "globex")):  # as stored before the change
        (st.store.root / "files" / file_id).write_bytes(legacy_seal(KEY, _rows(tenant)))
    assert (await _content(http, "acme", acme)).content == _rows("acme")

    assert rekey_store(st.db, st.store, None) == (2, 2)
    assert rekey_store(st.db, st.store, None) == (0, 2)  # a rerun has nothing left to do
    upgraded = (st.store.root / "files" / acme).read_bytes()
    assert upgraded.startswith(b"TFE3")  # resealed as chunks
    assert (await _content(http, "acme", acme)).content == _rows("acme")
    (st.store.root / "files" / globex).write_bytes(upgraded)
    assert (await _content(http, "globex", globex)).status_code == 500  # bound now
