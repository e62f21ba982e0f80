"""The training app: ``create_app(settings)`` wires storage, Ray, the registry client and
routes. Files and jobs are SQL rows; the job lifecycle runs as background tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from fastapi import APIRouter, FastAPI

from services.training.deps import TrainingState
from services.training.domain import metrics as job_metrics
from services.training.domain.erasures import Erasures
from services.training.domain.job_outputs import JobOutputs
from services.training.domain.lifecycle import JobLifecycle
from services.training.domain.retention import RetentionPurger
from services.training.ray.backend import RayBackend
from services.training.routes import erasure, files, jobs, runner, selection
from services.training.settings import TrainingSettings
from services.training.storage.files import BlobStore, Cipher
from shared.app import create_service_app
from shared.auth import InternalAuth
from shared.clients.registry import RegistryClient
from shared.db import Database, run_migrations

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_training"


def _cipher(settings: TrainingSettings) -> Cipher | None:
    """Encryption at rest of uploads and datasets: on when ``TUNEFLEET_DATA_KEYS`` is set
    (``shared.crypto``); the one place the cipher is plugged in."""
    from shared.crypto import DataCipher

    return DataCipher.from_settings()


def create_app(
    settings: TrainingSettings,
    *,
    registry_transport: httpx.AsyncBaseTransport | None = None,
    backend: RayBackend | None = None,
) -> FastAPI:
    """Build the training service. Nothing touches disk, DB or Ray until the lifespan starts.

    ``backend`` lets a caller share one Ray connection between app instances (a restart in
    tests); by default the app makes its own and stops an embedded head it started.
    """
    token = settings.resolved_token()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.db_url()
        await anyio.to_thread.run_sync(run_migrations, url, MIGRATIONS, VERSION_TABLE)
        db = Database(url)
        root = settings.data_root()
        store = BlobStore(root / "blobs", _cipher(settings))
        ray_backend = backend or RayBackend(
            settings.ray_temp_dir or Path(f"/tmp/tf-ray-{settings.port}"),
            address=settings.ray_address,
            num_cpus=settings.ray_num_cpus,
            python=settings.runner_python,
            work_root=settings.runner_work_root(),
            warm_ttl_s=settings.warm_runner_ttl_s,
        )
        registry = RegistryClient(
            settings.registry_url,
            token,
            transport=registry_transport,
            tracer_provider=app.state.tracer_provider,
        )
        lifecycle = JobLifecycle(
            db=db,
            store=store,
            backend=ray_backend,
            registry=registry,
            callback_url=settings.runner_callback_url(),
            data_root=root,
            max_len=settings.max_len,
            test_fraction=settings.test_fraction,
            poll_s=settings.monitor_poll_s,
        )
        outputs = JobOutputs(root, settings.ray_storage(), settings.runner_work_root())
        erasures = Erasures(db, store, outputs, lifecycle.cancel)
        app.state.training = TrainingState(
            settings=settings, db=db, store=store, lifecycle=lifecycle, erasures=erasures
        )

        async def db_ready() -> str | None:
            await anyio.to_thread.run_sync(db.ping)
            return None

        app.state.readiness_checks.append(db_ready)
        collector = job_metrics.register(app.state.metrics_registry, db)
        lifecycle.start()
        erasures.start()
        purger = RetentionPurger(db, store, interval_s=settings.retention_interval_s)
        app.state.retention = purger  # tests drive run_once() with a fake clock
        purger.start()
        try:
            yield
        finally:
            await purger.aclose()
            await erasures.aclose()
            app.state.metrics_registry.unregister(collector)
            await lifecycle.aclose()
            await registry.aclose()
            if backend is None:
                await anyio.to_thread.run_sync(ray_backend.close)
            db.dispose()

    app = create_service_app(
        "training",
        internal_token=token,
        lifespan=lifespan,
        title="tunefleet training",
        # the larger of the two upload caps, plus the form fields and multipart framing
        max_upload_bytes=lambda: max(settings.max_upload_bytes, settings.max_result_bytes) + 2**20,
        traces_endpoint=settings.traces_endpoint(),
    )
    api = APIRouter(dependencies=[InternalAuth])
    for module in (files, jobs, selection, erasure):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(runner.router)  # per-job runner token instead of the internal token
    return app
