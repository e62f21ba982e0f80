"""The inference app: ``create_app(settings, engine=...)``.

The engine is injected (constructor injection): ``__main__`` builds the vLLM engine, tests
share one engine across apps. The app owns the adapter cache, resolver and metrics; it starts
the engine in its lifespan if not started, and ``/readyz`` stays 503 until the engine has
generated one token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import APIRouter, FastAPI

from services.inference.domain.events import apply_event, reset_caches
from services.inference.domain.serving import Server
from services.inference.engine.adapters import AdapterCache
from services.inference.engine.base import GenerationRequest, InferenceEngine, collect
from services.inference.engine.resolver import ModelResolver
from services.inference.metrics import InferenceMetrics
from services.inference.routes import admin, events, openai
from services.inference.settings import InferenceSettings
from shared.adapters.archive import BaseModelSpec, linear_shapes_from_model_dir
from shared.app import create_service_app
from shared.auth import InternalAuth
from shared.clients.registry import RegistryClient
from shared.events_follower import EventFollower
from shared.metrics import new_registry
from shared.schemas.registry import RegistryEvent, Resolution

log = logging.getLogger(__name__)


def base_spec(settings: InferenceSettings) -> BaseModelSpec:
    path = settings.base_dir()
    return BaseModelSpec(
        id=settings.base_model,
        names=(settings.base_model, str(path), str(path.resolve()), path.name),
        linear_shapes=linear_shapes_from_model_dir(path),
    )


def create_app(
    settings: InferenceSettings,
    engine: InferenceEngine,
    *,
    registry_transport: httpx.AsyncBaseTransport | None = None,
    own_engine: bool = True,
) -> FastAPI:
    """``own_engine``: shut the engine down with the app (False when tests share one)."""
    token = settings.resolved_token()
    registry_metrics = new_registry()
    metrics = InferenceMetrics(registry_metrics, engine.stats)
    warm = {"ok": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = RegistryClient(
            settings.registry_url,
            token,
            transport=registry_transport,
            tracer_provider=app.state.tracer_provider,
        )

        async def fetch(res: Resolution, dest):  # type: ignore[no-untyped-def]
            assert res.adapter and res.version and res.tenant
            return await registry.download_archive(
                res.tenant, res.adapter, res.version, dest, sha256=res.sha256
            )

        def loaded(ref: str, seconds: float) -> None:
            metrics.adapter_load.observe(seconds)
            metrics.loaded.set(len(cache.loaded()))

        def evicted(ref: str) -> None:
            metrics.evictions.inc()
            metrics.loaded.set(len(cache.loaded()))

        spec = await anyio.to_thread.run_sync(base_spec, settings)
        cache = AdapterCache(
            engine,
            fetch,
            root=settings.adapter_dir(),
            base=spec,
            max_rank=settings.max_lora_rank,
            capacity=settings.max_cpu_loras,
            on_load=loaded,
            on_evict=evicted,
        )
        app.state.server = Server(
            engine,
            cache,
            ModelResolver(registry),
            metrics,
            base_model=settings.base_model,
            base_owner=settings.base_owner,
            max_model_len=settings.max_model_len,
            default_max_tokens=settings.default_max_tokens,
            max_running=settings.max_num_seqs,
            max_waiting=settings.max_waiting,
        )
        warmup = asyncio.create_task(_warm_up(engine, warm))
        follower = _follow_events(settings, registry, app)
        try:
            yield
        finally:
            app.state.draining = True
            warmup.cancel()
            if follower is not None:
                await follower.stop()
            for task in list(app.state.background):
                task.cancel()
            await cache.close()
            await registry.aclose()
            if own_engine:
                await engine.shutdown()

    async def engine_ready() -> str | None:
        if engine.is_dead():
            return "engine is dead"
        return None if warm["ok"] else "engine starting"

    app = create_service_app(
        "inference",
        internal_token=token,
        lifespan=lifespan,
        title="tunefleet inference",
        registry=registry_metrics,
        traces_endpoint=settings.traces_endpoint(),
    )
    app.state.background = set()
    app.state.readiness_checks.append(engine_ready)
    # the gateway routes by the bases, and spills over to another replica at max_running,
    # counting what every gateway runs on it (``running``, also on each answer)
    app.state.ready_info.update(
        bases=[settings.base_model],
        max_running=settings.max_num_seqs,
        running=lambda: app.state.server.admitted if hasattr(app.state, "server") else 0,
    )
    api = APIRouter(dependencies=[InternalAuth])
    for module in (openai, admin, events):
        api.include_router(module.router)
    app.include_router(api)
    return app


def _follow_events(
    settings: InferenceSettings, registry: RegistryClient, app: FastAPI
) -> EventFollower | None:
    """Started: the follower of the registry's change feed (deletions reach this replica
    wherever it sits behind a Service)."""
    if not settings.follow_events:
        return None
    server: Server = app.state.server

    async def apply(event: RegistryEvent) -> None:
        await apply_event(server, event.model_dump(), app.state.background)

    async def on_reset() -> None:
        await reset_caches(server)

    follower = EventFollower(registry, apply, on_reset, wait_s=settings.events_wait_s)
    follower.start()
    return follower


async def _warm_up(engine: InferenceEngine, warm: dict[str, bool]) -> None:
    """Start the engine if needed and generate one token: only then is the replica ready."""
    try:
        await engine.start()
        await collect(
            engine.generate(
                GenerationRequest(request_id="warmup", prompt="Hello", max_tokens=1, temperature=0)
            )
        )
        warm["ok"] = True
        log.info("engine ready")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("engine failed to start")
