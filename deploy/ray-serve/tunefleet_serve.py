"""Inference as a Ray Serve application: the same ``InferenceEngine`` (vLLM), the same
``services.inference.app.create_app`` factory, the same ``InferenceSettings`` and the same
``engine_config(settings)`` as ``python -m services.inference``; one engine per Serve replica,
scaled by Ray Serve on a cluster.

    serve run deploy/ray-serve/serve_config.yaml        # or, from Python:
    serve.run(build_app({"num_replicas": 2, "num_gpus": 1}))

The FastAPI app (and so the engine) is built on the replica, not in the driver: nothing heavy
is created by :func:`build_app`, which only describes the deployment graph.

* **Settings**: ``TUNEFLEET_INFERENCE_*`` / ``TUNEFLEET_*`` variables of the Ray nodes plus the
  application's arguments (anything not in :data:`SERVE_OPTIONS` is an ``InferenceSettings``
  field). The internal token must be configured (``TUNEFLEET_INTERNAL_TOKEN`` on the nodes,
  e.g. from a Kubernetes secret, or an existing ``$TUNEFLEET_HOME/internal_token``): a replica
  never invents one, since nobody else would know it.
* **Adapter affinity** is Serve's model multiplexing: the gateway sends the immutable version it
  resolved (its routing key) in the ``serve_multiplexed_model_id`` header; Serve's proxy routes
  it to a replica that already has that model id loaded, and the replica records it through
  :meth:`InferenceReplica.load_model` (LRU of ``max_cpu_loras + 1`` ids, the engine's own
  adapter LRU plus the base).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter
from ray import serve
from ray.serve.deployment import Application
from starlette.types import ASGIApp, Receive, Scope, Send

# Options of the Serve deployment itself; everything else is an InferenceSettings field
# (model_dir, max_loras, registry_url, …), also settable as TUNEFLEET_INFERENCE_* variables.
SERVE_OPTIONS = ("num_replicas", "num_gpus", "num_cpus", "max_ongoing_requests")
MULTIPLEX_HEADER = "serve_multiplexed_model_id"  # ray.serve._private.constants
STARTUP_TIMEOUT_S = 900.0  # engine start + warm-up; Serve retries a replica that fails it


class MultiplexedModel:
    """What Serve's multiplexer keeps per model id: the engine loads the adapter itself (on
    first use, from the registry), so this only marks the id as warm on this replica."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id


class MultiplexMiddleware:
    """Before each HTTP request, register the request's multiplexed model id (if any) with
    the replica's ``@serve.multiplexed`` loader, so Serve routes that id here next time."""

    def __init__(self, app: ASGIApp, load: Callable[[str], Awaitable[Any]]) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                await self.load(model_id)
        await self.app(scope, receive, send)


def _replica_id() -> str:
    """A settings-valid, per-replica id (its adapter cache directory) from Serve's own."""
    try:
        tag = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (tests building the app directly)
        return "serve-0"
    return ("serve-" + re.sub(r"[^a-z0-9_-]", "-", tag.lower()))[:63]


def replica_settings(settings_overrides: dict[str, Any]) -> Any:
    """The replica's ``InferenceSettings``; refuses to start without a configured token."""
    from services.inference.settings import InferenceSettings
    from shared.settings import TOKEN_FILE, load_settings

    overrides = {"replica_id": _replica_id(), **settings_overrides}
    settings = load_settings(InferenceSettings, **overrides)
    if settings.internal_token is None and not (settings.home / TOKEN_FILE).exists():
        raise RuntimeError(
            "TUNEFLEET_INTERNAL_TOKEN is not set on this Ray node (nor is "
            f"{settings.home / TOKEN_FILE}): the gateway and registry could not call this "
            "replica; set it from the fleet's secret"
        )
    return settings


def ready_before_serving(app: FastAPI, timeout_s: float) -> None:
    """Make the app's startup end only once its readiness checks pass (engine started and
    warm). The standalone service answers ``/healthz`` while it warms up and lets ``/readyz``
    gate traffic; Serve routes to a replica as soon as its constructor (which runs the ASGI
    lifespan's startup) returns, so here startup itself waits, and a rolling update only moves
    on once the new replica can answer."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with inner(a) as state:
            deadline = time.monotonic() + timeout_s
            while True:
                problems = [p for check in a.state.readiness_checks if (p := await check())]
                if not problems:
                    break
                if "engine is dead" in problems or time.monotonic() > deadline:
                    raise RuntimeError(f"replica not ready: {problems}")
                await asyncio.sleep(0.5)
            yield state

    app.router.lifespan_context = lifespan


def build_asgi(
    settings_overrides: dict[str, Any], load: Callable[[str], Awaitable[Any]] | None = None
) -> FastAPI:
    """The inference app of one replica: settings from the environment plus overrides, the
    engine from ``engine_config(settings)`` exactly as the standalone service."""
    from services.inference.app import create_app
    from services.inference.engine.base_source import materialize_base_sync
    from services.inference.engine.vllm_engine import VllmEngine
    from services.inference.settings import engine_config

    settings = materialize_base_sync(replica_settings(settings_overrides))
    engine = VllmEngine(engine_config(settings))
    app = create_app(settings, engine)  # its lifespan starts and stops the engine
    app.state.replica_settings, app.state.engine = settings, engine
    ready_before_serving(app, timeout_s=STARTUP_TIMEOUT_S)
    if load is not None:
        app.add_middleware(MultiplexMiddleware, load=load)
    return app


@serve.ingress()
class InferenceReplica:
    """One Serve replica = one inference app with its own engine and adapter cache."""

    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        self.settings_overrides = dict(settings_overrides or {})
        self.loads: Counter | None = None
        self.asgi: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = self.asgi = build_asgi(self.settings_overrides, load=self.load_model)
        self.loads = Counter(
            "tunefleet_inference_multiplexed_loads",
            "Model ids (immutable adapter versions or the base) Serve's multiplexer loaded "
            "on this replica: a cold id for this replica",
            ["model"],
            registry=app.state.metrics_registry,
        )
        return app

    async def check_health(self) -> None:
        """Serve's periodic health check: a dead engine (EngineCore gone) fails it, so Serve
        replaces the replica instead of routing requests to it."""
        if self.asgi is not None and self.asgi.state.engine.is_dead():
            raise RuntimeError("the replica's vLLM engine is dead")

    async def engine_info(self) -> dict[str, Any]:
        """What this replica runs with (``serve.get_app_handle(...).engine_info.remote()``):
        its settings-derived engine config and whether the fast CPU LoRA path is live in the
        engine's worker (``None`` on GPU)."""
        assert self.asgi is not None
        settings, engine = self.asgi.state.replica_settings, self.asgi.state.engine
        return {
            "replica_id": settings.replica_id,
            "device": engine.device,
            "fast_cpu_lora": await engine.fast_cpu_lora(),
            "config": dict(vars(engine.config)),
        }

    @serve.multiplexed(max_num_models_per_replica=33)  # max_cpu_loras (32) + the base
    async def load_model(self, model_id: str) -> MultiplexedModel:
        if self.loads is not None:
            self.loads.labels(model_id).inc()
        return MultiplexedModel(model_id)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (``serve run tunefleet_serve:build_app key=value …``)."""
    args = dict(args or {})
    serve_opts = {k: args.pop(k) for k in SERVE_OPTIONS if k in args}
    num_gpus = float(serve_opts.pop("num_gpus", 0))
    num_cpus = float(serve_opts.pop("num_cpus", 1))
    deployment = serve.deployment(
        name="tunefleet-inference",
        num_replicas=int(serve_opts.pop("num_replicas", 1)),
        max_ongoing_requests=int(serve_opts.pop("max_ongoing_requests", 64)),
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
        health_check_period_s=10,
        graceful_shutdown_timeout_s=60,  # the app drains in-flight requests on shutdown
    )(InferenceReplica)
    if num_gpus > 0:
        args.setdefault("device", "cuda")
    return deployment.bind(args)
