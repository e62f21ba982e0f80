"""The registry app: ``create_app(settings)`` wires storage, the dispatcher and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from fastapi import APIRouter, FastAPI

from services.registry.deps import RegistryState
from services.registry.domain import catalog
from services.registry.domain.adapters import PushPolicy
from services.registry.domain.dispatch import WebhookDispatcher
from services.registry.domain.model_artifacts import ModelPolicy
from services.registry.routes import adapters, feed, lineage, webhooks
from services.registry.routes import catalog as catalog_routes
from services.registry.settings import RegistrySettings
from services.registry.storage.artifacts import FileArtifactStore
from shared.adapters.archive import ArchiveLimits
from shared.app import create_service_app
from shared.auth import InternalAuth
from shared.db import Database, run_migrations

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_registry"


def create_app(
    settings: RegistrySettings, *, webhook_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the registry. Nothing touches disk or DB until the lifespan starts."""
    token = settings.resolved_token()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.db_url()
        await anyio.to_thread.run_sync(run_migrations, url, MIGRATIONS, VERSION_TABLE)
        db = Database(url)

        def seed() -> None:  # reads (and hashes) model directories: off the event loop
            with db.session(write=True) as s:
                catalog.seed_catalog(s, settings.models_root())

        await anyio.to_thread.run_sync(seed)
        dispatcher = WebhookDispatcher(
            db,
            system_secret=token,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            poll_s=settings.webhook_poll_s,
            lane_concurrency=settings.webhook_lane_concurrency,
            transport=webhook_transport,
            url_allow=settings.webhook_allow,
        )
        app.state.registry = RegistryState(
            settings=settings,
            db=db,
            store=FileArtifactStore(settings.artifacts_root()),
            dispatcher=dispatcher,
            policy=PushPolicy(
                max_rank=settings.max_lora_rank,
                limits=ArchiveLimits(
                    max_archive_bytes=settings.max_archive_bytes,
                    max_members=settings.max_archive_members,
                    max_uncompressed_bytes=settings.max_uncompressed_bytes,
                ),
                system_urls=list(settings.notify_urls),
            ),
            model_policy=ModelPolicy(
                limits=ArchiveLimits(
                    max_archive_bytes=settings.max_model_archive_bytes,
                    max_members=settings.max_archive_members,
                    max_uncompressed_bytes=settings.max_model_uncompressed_bytes,
                )
            ),
        )

        async def db_ready() -> str | None:
            await anyio.to_thread.run_sync(db.ping)
            return None

        app.state.readiness_checks.append(db_ready)
        dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            db.dispose()

    app = create_service_app(
        "registry",
        internal_token=token,
        lifespan=lifespan,
        title="tunefleet adapter registry",
        # an archive plus its metadata field and multipart framing; a model upload has its own
        max_upload_bytes=settings.max_archive_bytes + 2**20,
        upload_limits={
            catalog_routes.MODEL_ARCHIVE_LIMIT: settings.max_model_archive_bytes + 2**20
        },
        traces_endpoint=settings.traces_endpoint(),
    )
    api = APIRouter(dependencies=[InternalAuth])
    for module in (catalog_routes, adapters, webhooks, lineage, feed):
        api.include_router(module.router)
    app.include_router(api)
    return app
