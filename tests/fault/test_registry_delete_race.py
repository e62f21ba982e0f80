"""Deleting an adapter while another push stores identical bytes never leaves a version without
its archive (issue 18, item 13), on SQLite and Postgres.

Both windows of the race are forced with a store that stops at one point until told to go on
(the real file store otherwise): (1) the push found the blob already stored, then the delete
removes it before the push commits; (2) the delete decided the blob is unused, then the push
commits before the delete removes it. Afterwards the pushed version's archive downloads with
its recorded sha256.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from services.registry.app import create_app
from services.registry.domain.adapters import delete_adapter, push_version
from services.registry.settings import RegistrySettings
from services.registry.storage.artifacts import FileArtifactStore, sha256_file
from shared.schemas.registry import VersionMetadata
from tests.support.adapters import make_adapter, pack

TOKEN = "race-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}


class PausingStore(FileArtifactStore):
    """The file store, stopping once in ``put_file`` (after storing) or ``delete`` (before
    deleting) until ``go`` is set; ``paused`` says it got there."""

    def __init__(self, root: Path, where: str) -> None:
        super().__init__(root)
        self.where = where
        self.paused = threading.Event()
        self.go = threading.Event()

    def _stop(self, where: str) -> None:
        if self.where == where and not self.paused.is_set():
            self.paused.set()
            assert self.go.wait(30)

    def put_file(self, src: Path) -> tuple[str, int]:
        out = super().put_file(src)
        self._stop("put")
        return out

    def delete(self, sha256: str) -> None:
        self._stop("delete")
        super().delete(sha256)


@pytest.fixture(params=["sqlite", "postgres"])
async def registry(
    request: pytest.FixtureRequest, tmp_path: Path, model_dir: Path
) -> AsyncIterator[FastAPI]:
    url = (
        None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    )
    app = create_app(
        RegistrySettings(
            home=tmp_path / "registry",
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            database_url=url,
        )
    )
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    d = tmp_path_factory.mktemp("race")
    return pack(make_adapter(model_dir, d / "a", r=4), d / "a.tar.gz")


async def push_http(http: httpx.AsyncClient, name: str, archive: Path) -> dict[str, Any]:
    with archive.open("rb") as fh:
        r = await http.post(
            f"/v1/adapters/{name}/versions",
            headers=AUTH,
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model":"tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    return dict(r.json())


def push_b(st: Any, store: FileArtifactStore, archive: Path, tmp: Path) -> None:
    copy = tmp / "b.tar.gz"
    shutil.copy(archive, copy)
    push_version(
        st.db,
        store,
        tenant="acme",
        name="b",
        archive=copy,
        meta=VersionMetadata(base_model="tiny-llama"),
        actor="test",
        policy=st.policy,
    )


@pytest.mark.parametrize("window", ["push_found_blob", "delete_decided"])
async def test_delete_racing_a_push_of_the_same_bytes(
    registry: FastAPI, archive: Path, tmp_path: Path, window: str
) -> None:
    st = registry.state.registry
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=registry), base_url="http://registry"
    ) as http:
        first = await push_http(http, "a", archive)
        digest = first["sha256"]
        root = st.store.root
        if window == "push_found_blob":
            store = PausingStore(root, "put")
            push = asyncio.create_task(asyncio.to_thread(push_b, st, store, archive, tmp_path))
            assert await asyncio.to_thread(store.paused.wait, 30)
            await asyncio.to_thread(delete_adapter, st.db, st.store, "acme", "a")
            store.go.set()
            await push
        else:
            store = PausingStore(root, "delete")
            deleting = asyncio.create_task(
                asyncio.to_thread(delete_adapter, st.db, store, "acme", "a")
            )
            assert await asyncio.to_thread(store.paused.wait, 30)
            push = asyncio.create_task(asyncio.to_thread(push_b, st, st.store, archive, tmp_path))
            await asyncio.sleep(0.5)  # the push runs as far as it can (to its commit, or a lock)
            store.go.set()
            await deleting
            await push
        versions = (await http.get("/v1/adapters/b/versions", headers=AUTH)).json()["data"]
        assert [v["sha256"] for v in versions] == [digest]
        assert st.store.exists(digest), "version b@1 was left without its archive"
        r = await http.get("/v1/adapters/b/versions/1/archive", headers=AUTH)
        assert r.status_code == 200, r.text
        got = tmp_path / "got.tar.gz"
        got.write_bytes(r.content)
        assert sha256_file(got) == digest


def test_safetensors_header_over_the_cap_is_refused(tmp_path: Path) -> None:
    """A 17 MiB header (valid JSON padded with spaces, as the format allows) is refused before
    it is parsed; the old limit was the Rust loader's 100 MB."""
    from shared.adapters.safetensors_header import MAX_HEADER_BYTES, read_safetensors_header
    from shared.errors import InvalidRequest

    n = 17 * 2**20
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(n.to_bytes(8, "little") + b"{}" + b" " * (n - 2))
    with pytest.raises(InvalidRequest) as exc:
        read_safetensors_header(weights)
    assert exc.value.code == "corrupt_weights" and "limit" in exc.value.message
    assert MAX_HEADER_BYTES == 16 * 2**20
    small = tmp_path / "small.safetensors"
    small.write_bytes((16).to_bytes(8, "little") + b"{}" + b" " * 14)
    assert read_safetensors_header(small) == {}
