"""Acknowledged writes survive a power cut (issue 18, low item "SQLite synchronous=NORMAL").

* Every service's SQLite connection runs ``synchronous=FULL``: with WAL, ``NORMAL`` syncs
  the log only at checkpoints, so commits acknowledged since the last one were lost on a
  power cut.
* A blob is durable before the request that stored it is answered: its bytes and the
  directory entry of its final name are fsynced (a rename alone lives in the page cache).

How fsync is observed: ``os.fsync`` is wrapped by a recorder that calls the real one and notes
which path the descriptor names (``/proc/self/fd``): nothing is faked, the services run
their real code on a real disk.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.training.app import create_app as create_training
from services.training.settings import TrainingSettings
from services.training.storage.files import BlobStore
from shared.crypto import DataCipher
from shared.db import Database
from tests.support.adapters import make_adapter, pack
from tests.support.training import UnreachableRay

TOKEN = "durable-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every path fsynced while the test runs, in order."""
    real = os.fsync
    seen: list[Path] = []

    def recording_fsync(fd: int) -> None:
        real(fd)
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield seen


def _synchronous(db: Database) -> list[int]:
    """The setting on several pooled connections (it is per connection, never stored)."""
    conns = [db.engine.connect() for _ in range(3)]
    try:
        return [int(c.exec_driver_sql("PRAGMA synchronous").scalar_one()) for c in conns]
    finally:
        for c in conns:
            c.close()


def _registry(home: Path, model_dir: Path) -> FastAPI:
    return create_registry(
        RegistrySettings(home=home, internal_token=TOKEN, seed_models_dir=model_dir.parent)
    )


def _training(home: Path, registry: FastAPI | None = None) -> FastAPI:
    settings = TrainingSettings(home=home, internal_token=TOKEN, registry_url="http://registry")
    transport = httpx.ASGITransport(app=registry) if registry is not None else None
    return create_training(settings, backend=UnreachableRay(), registry_transport=transport)


async def test_every_service_sqlite_connection_is_synchronous_full(
    tmp_path: Path, model_dir: Path
) -> None:
    gateway = create_gateway(
        GatewaySettings(home=tmp_path / "gw", internal_token=TOKEN, admin_key="tf-admin-durable")
    )
    registry = _registry(tmp_path / "reg", model_dir)
    training = _training(tmp_path / "tr")
    for app, db_of in (
        (gateway, lambda a: a.state.gateway.db),
        (registry, lambda a: a.state.registry.db),
        (training, lambda a: a.state.training.db),
    ):
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            db = db_of(app)
            assert db.engine.dialect.name == "sqlite"
            assert _synchronous(db) == [FULL] * 3, app.title


@pytest.fixture
async def registry(tmp_path: Path, model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _registry(tmp_path / "reg", model_dir)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry", headers=AUTH
        ) as http,
    ):
        yield http


async def test_a_pushed_archive_is_on_disk_before_the_push_is_answered(
    registry: httpx.AsyncClient, tmp_path: Path, model_dir: Path, fsynced: list[Path]
) -> None:
    archive = pack(make_adapter(model_dir, tmp_path / "ad"), tmp_path / "a.tar.gz")
    fsynced.clear()
    with archive.open("rb") as fh:
        r = await registry.post(
            "/v1/adapters/a/versions",
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model":"tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    digest = r.json()["sha256"]
    blob = tmp_path / "reg" / "artifacts" / "sha256" / digest[:2] / digest[2:]
    assert blob.is_file()
    # the blob's bytes (synced before the rename: under its temp name), then the entry
    assert any(p.name.startswith("blob-") for p in fsynced), fsynced
    assert blob.parent in fsynced, fsynced  # the rename's directory entry
    assert blob.parent.parent in fsynced, fsynced  # the new sha256/ab directory itself


async def test_an_uploaded_training_file_is_on_disk_before_the_upload_is_answered(
    tmp_path: Path, model_dir: Path, fsynced: list[Path]
) -> None:
    registry = _registry(tmp_path / "reg", model_dir)
    app = _training(tmp_path / "tr", registry)
    async with (
        LifespanManager(registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://training", headers=AUTH
        ) as http,
    ):
        fsynced.clear()
        rows = b"".join(b'{"text": "row %d", "label": "positive"}\n' % i for i in range(20))
        r = await http.post(
            "/v1/files",
            files={"file": ("t.jsonl", rows, "application/octet-stream")},
            data={"purpose": "fine-tune"},
        )
        assert r.status_code in (200, 201), r.text
        blob = next(p for p in (tmp_path / "tr").rglob(r.json()["id"]) if p.is_file())
    synced_tmp = [p for p in fsynced if p.name.startswith(".tmp-")]
    assert [p.parent for p in synced_tmp] == [blob.parent], fsynced  # the bytes
    assert fsynced[-1] == blob.parent, fsynced  # then the entry of the renamed file


@pytest.mark.parametrize("encrypted", [False, True])
def test_blob_store_put_syncs_file_and_directory(
    tmp_path: Path, fsynced: list[Path], encrypted: bool
) -> None:
    store = BlobStore(tmp_path, DataCipher([os.urandom(32)]) if encrypted else None)
    store.put("datasets/ds_1/train.jsonl", b'{"x": 1}\n', tenant="acme")
    folder = tmp_path / "datasets" / "ds_1"
    synced_tmp = [i for i, p in enumerate(fsynced) if p.name.startswith(".tmp-")]
    assert [fsynced[i].parent for i in synced_tmp] == [folder], fsynced  # the bytes
    assert tmp_path in fsynced and tmp_path / "datasets" in fsynced  # the new directories
    assert fsynced[-1] == folder and synced_tmp[0] < len(fsynced) - 1  # then the rename
