"""Fixtures shared by the whole suite: the built model, databases (SQLite and a real
Postgres cluster), and the registry app in-process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from asgi_lifespan import LifespanManager

from tests.support.postgres import PostgresCluster, pg_bin_dir

TOKEN = "test-internal-token"


@pytest.fixture(scope="session")
def home_root() -> Path:
    """``TUNEFLEET_HOME`` as every service reads it (``./var`` when unset). Read from the
    environment, not through the bare ``ServiceSettings`` base class: without a service's
    env prefix its ``home`` field also matches ``HOME`` (/root), which put the model there."""
    return Path(os.environ.get("TUNEFLEET_HOME") or "var").resolve()


@pytest.fixture(scope="session")
def models_root(home_root: Path) -> Path:
    return home_root / "models"


@pytest.fixture(scope="session")
def model_dir(models_root: Path) -> Path:
    """tiny-llama, built by ``make model`` (built here if a test run starts without it)."""
    from shared.models.build import build_model, model_is_current

    path = models_root / "tiny-llama"
    if not model_is_current(path):
        build_model(path)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    if pg_bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run must install it")
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql)")
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="tf-pg-"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()


@dataclass
class RegistryHarness:
    app: object
    http: httpx.AsyncClient  # raw client with the internal token, tenant "acme"
    home: Path

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": tenant}


@pytest.fixture
async def registry(tmp_path: Path, db_url: str, model_dir: Path) -> AsyncIterator[RegistryHarness]:
    from services.registry.app import create_app
    from services.registry.settings import RegistrySettings

    settings = RegistrySettings(
        home=tmp_path,
        internal_token=TOKEN,
        database_url=db_url,
        seed_models_dir=model_dir.parent,
        max_lora_rank=16,
        max_archive_members=16,
        max_uncompressed_bytes=16 << 20,
        webhook_poll_s=0.05,
    )
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://registry",
            headers={"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"},
        ) as http:
            yield RegistryHarness(app=app, http=http, home=tmp_path)


@pytest.fixture(scope="session")
async def vllm_engine(model_dir: Path) -> AsyncIterator[object]:
    """ONE real vLLM engine for the whole test run (starting one costs ~30 s on 2 cores)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from tests.support.engine import start_engine

    engine = await start_engine(model_dir)
    procs = list(engine._engine_procs)
    yield engine
    await engine.shutdown()
    assert engine.is_dead()
    left = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"vLLM processes left after shutdown: {left}"
