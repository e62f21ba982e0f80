"""A replica configured with ``base_source=registry`` fetches its base before the engine is
built: over real HTTP from a registry on loopback, sha256-checked, unpacked under its own
home, reused at the next start; from sync start-up code inside a running event loop too (Ray
Serve builds the app there). A seeded model or another tenant's is a clear 404."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.inference.engine.base_source import materialize_base_sync
from services.inference.settings import InferenceSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from shared.errors import NotFound
from tests.support.models import model_archive
from tests.support.postgres import free_port
from tests.support.training import ServerThread

TOKEN = "base-fetch-token"


@pytest.fixture
def registry_url(tmp_path: Path, model_dir: Path) -> Iterator[str]:
    port = free_port()
    app = create_registry(
        RegistrySettings(
            home=tmp_path / "registry",
            internal_token=TOKEN,
            database_url=f"sqlite:///{tmp_path / 'registry.db'}",
            seed_models_dir=model_dir.parent,
        )
    )
    server = ServerThread(app, port).start()
    url = f"http://127.0.0.1:{port}"
    archive = model_archive(model_dir)
    with archive.open("rb") as fh:
        r = httpx.post(
            f"{url}/v1/base-models",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"},
            files={"file": ("m.tar.gz", fh, "application/gzip")},
            data={"metadata": '{"id": "acme-merged"}'},
            timeout=120,
        )
    assert r.status_code == 201, r.text
    try:
        yield url
    finally:
        server.stop()


def replica(tmp_path: Path, url: str, **kw: object) -> InferenceSettings:
    return InferenceSettings(
        home=tmp_path / "replica",
        internal_token=TOKEN,
        registry_url=url,
        base_source="registry",
        **{"base_model": "acme-merged", "base_owner": "acme", **kw},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_fetched_verified_unpacked_and_reused(
    tmp_path: Path, registry_url: str, model_dir: Path
) -> None:
    settings = materialize_base_sync(replica(tmp_path, registry_url))  # inside a running loop
    served = settings.base_dir()
    sha = digest(model_archive(model_dir))
    assert served == tmp_path / "replica/inference/inference-0/bases" / f"acme-merged-{sha}"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert digest(served / name) == digest(model_dir / name)
    assert [p.name for p in served.parent.iterdir()] == [served.name]  # no scratch left
    stamp = (served / "model.safetensors").stat().st_mtime_ns
    again = materialize_base_sync(replica(tmp_path, registry_url))
    assert again.base_dir() == served
    assert (served / "model.safetensors").stat().st_mtime_ns == stamp  # not fetched again


@pytest.mark.parametrize(
    ("model", "owner", "code"),
    [
        ("tiny-llama", "system", "base_model_has_no_archive"),  # seeded: served from its dir
        ("acme-merged", "globex", "base_model_not_found"),  # another tenant's
    ],
)
def test_what_cannot_be_fetched_is_a_clear_404(
    tmp_path: Path, registry_url: str, model: str, owner: str, code: str
) -> None:
    with pytest.raises(NotFound) as info:
        materialize_base_sync(replica(tmp_path, registry_url, base_model=model, base_owner=owner))
    assert info.value.code == code
