"""The gateway app: ``create_app(settings)`` — the one public, OpenAI-compatible surface."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from fastapi import FastAPI
from starlette.middleware import Middleware

from gateway.deps import AUTHENTICATED_PREFIXES, GatewayState, authenticate_before_body
from gateway.domain import audit
from gateway.domain.abandoned import AbandonedBilling
from gateway.domain.audit_keys import audit_keys
from gateway.domain.credentials import KEY_HASH_SECRET_FILE, key_hash_secret
from gateway.domain.events import SeenEvents, apply_event
from gateway.domain.fasthop import new_session
from gateway.domain.feedback import FeedbackBook, SqlPredictions
from gateway.domain.generation import Generations
from gateway.domain.idempotency import ExpiredPurger
from gateway.domain.keys import bootstrap_admin
from gateway.domain.pii_guard import PiiGuard
from gateway.domain.quota_sql import SqlQuotaState
from gateway.domain.quota_state import MemoryQuotaState, QuotaState
from gateway.domain.quotas import Limits, Quotas
from gateway.domain.resolver import ModelResolver
from gateway.domain.routing import ReplicaSet
from gateway.domain.upstream import Upstream
from gateway.domain.usage import UsageRecorder
from gateway.routes import (
    admin,
    console,
    erasure,
    events,
    feedback,
    inference,
    integrations,
    quotas,
    registry,
    training,
)
from gateway.routes.fastpath import InferenceFastPath
from gateway.routes.training import TRAINING_FILE_LIMIT
from gateway.settings import GatewaySettings
from shared.apidocs import declare_bearer_auth
from shared.app import create_service_app
from shared.clients.registry import RegistryClient
from shared.clients.training import TrainingClient
from shared.db import Database, run_migrations
from shared.events_follower import EventFollower
from shared.schemas.registry import RegistryEvent
from shared.tracing import instrument_client

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_gateway"


def default_limits(settings: GatewaySettings) -> Callable[[], Limits]:
    """Limits for tenants without their own, re-read per request (settings may be changed
    live) and built once per distinct value."""
    built: dict[tuple[int, ...], Limits] = {}

    def current() -> Limits:
        values = (
            settings.default_rpm,
            settings.default_tpm,
            settings.default_max_streams,
            settings.default_max_adapters,
            settings.default_max_jobs,
        )
        limits = built.get(values)
        if limits is None:
            limits = built[values] = Limits(*values)
        return limits

    return current


def follow_events(
    settings: GatewaySettings, registry: RegistryClient, resolver: ModelResolver, seen: SeenEvents
) -> EventFollower | None:
    """Started: the follower of the registry's change feed that keeps ``resolver`` current."""
    if not settings.follow_events:
        return None

    async def apply(event: RegistryEvent) -> None:
        apply_event(resolver, event.model_dump(), seen)

    async def reset() -> None:
        resolver.clear()

    follower = EventFollower(registry, apply, reset, wait_s=settings.events_wait_s)
    follower.start()
    return follower


def create_app(
    settings: GatewaySettings, *, upstream_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    token = settings.resolved_token()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.db_url()
        await anyio.to_thread.run_sync(run_migrations, url, MIGRATIONS, VERSION_TABLE)
        db = Database(url)
        key_secret = await anyio.to_thread.run_sync(
            key_hash_secret,
            settings.key_hash_secret.get_secret_value() if settings.key_hash_secret else None,
            settings.home / KEY_HASH_SECRET_FILE,
            db,
            token,
        )
        configured = settings.admin_key.get_secret_value() if settings.admin_key else None
        keys = audit_keys(settings, key_secret)

        def bootstrap() -> str | None:
            with db.session(write=True) as s:
                audit.seal(s, keys)
                return bootstrap_admin(s, key_secret, keys, configured, settings.admin_key_file())

        written = await anyio.to_thread.run_sync(bootstrap)  # never block the event loop
        if written:
            log.info("bootstrap admin key written", extra={"path": written})
        http = httpx.AsyncClient(
            transport=upstream_transport,
            timeout=httpx.Timeout(settings.upstream_timeout_s, connect=3.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
        tracer = app.state.tracer_provider  # None: tracing off
        instrument_client(http, tracer)
        replicas = ReplicaSet(settings.inference_urls, http)
        # Generations take the lean client (gateway/domain/fasthop.py) over the network; an
        # injected transport (in-process tests) carries everything through httpx instead.
        hop = new_session(settings.upstream_timeout_s) if upstream_transport is None else None
        upstream = Upstream(http, replicas, hop=hop, tracer_provider=tracer)
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=3.0)
        training = TrainingClient(
            settings.training_url,
            token,
            transport=upstream_transport,
            timeout=timeout,
            tracer_provider=tracer,
        )
        registry_client = RegistryClient(
            settings.registry_url,
            token,
            transport=upstream_transport,
            timeout=timeout,
            tracer_provider=tracer,
        )
        usage = UsageRecorder(db)
        abandoned = AbandonedBilling(token, transport=upstream_transport)
        resolver = ModelResolver(registry_client, ttl_s=settings.resolve_ttl_s)
        shared = settings.shared_state()  # several gateways on one database
        predictions = SqlPredictions(db, settings.feedback_ttl_s) if shared else None
        feedback = FeedbackBook(app.state.metrics_registry, store=predictions)
        quota_state: QuotaState = (
            SqlQuotaState(db, lease_s=settings.stream_lease_s) if shared else MemoryQuotaState()
        )
        app.state.gateway = GatewayState(
            settings=settings,
            db=db,
            key_secret=key_secret,
            audit_keys=keys,
            internal_token=token,
            upstream=upstream,
            training=training,
            registry=registry_client,
            replicas=replicas,
            quotas=Quotas(db, default_limits(settings), quota_state),
            resolver=resolver,
            feedback=feedback,
            usage=usage,
            pii=PiiGuard(max_chars=settings.pii_max_chars, workers=settings.pii_workers),
            generations=Generations(
                resolver,
                upstream,
                usage,
                feedback,
                default_max_tokens=settings.default_max_tokens_reserved,
                abandoned=abandoned,
            ),
            seen_events=SeenEvents(),
        )
        await replicas.check_once()
        replicas.start()

        async def inference_ready() -> str | None:
            return None if replicas.any_ready() else "no inference replica is ready"

        app.state.readiness_checks.append(inference_ready)
        usage.start()
        also = [predictions.purge] if predictions else []
        purger = ExpiredPurger(db, settings.idempotency_purge_s, also=also)
        purger.start()
        follower = follow_events(settings, registry_client, resolver, app.state.gateway.seen_events)
        await quota_state.start()
        if predictions:
            await predictions.start()
        try:
            yield
        finally:
            if predictions:
                await predictions.stop()
            await quota_state.stop()
            if follower is not None:
                await follower.stop()
            await purger.stop()
            await replicas.stop()
            await abandoned.stop()  # bills what is still being fetched before usage stops
            await usage.stop()
            await upstream.aclose()
            await training.aclose()
            await registry_client.aclose()
            db.dispose()

    app = create_service_app(
        "gateway",
        internal_token=token,
        lifespan=lifespan,
        title="tunefleet gateway",
        max_body_bytes=lambda: settings.max_body_bytes,  # read per request: may change live
        max_upload_bytes=lambda: settings.max_upload_bytes,
        upload_limits={TRAINING_FILE_LIMIT: lambda: settings.max_training_file_bytes},
        before_body=authenticate_before_body,
        traces_endpoint=settings.traces_endpoint(),
    )
    for module in (
        inference,
        registry,
        training,
        integrations,
        feedback,
        events,
        admin,
        quotas,
        erasure,
    ):
        app.include_router(module.router)
    app.include_router(console.router)
    # innermost middleware (after the body limit and authentication): the two generation
    # routes served without FastAPI's routing and dependency solving (issue 19 item 5)
    app.user_middleware.append(Middleware(InferenceFastPath))
    declare_bearer_auth(
        app,
        lambda path: path.startswith(AUTHENTICATED_PREFIXES),
        "A tenant API key (or the admin key): Authorization: Bearer <key>",
    )
    return app
