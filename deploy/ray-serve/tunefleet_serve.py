"""Inference as a Ray Serve application: the same ``InferenceEngine`` (vLLM) and the same
``services.inference.app.create_app`` factory as ``python -m services.inference``, one engine
per Serve replica, scaled by Ray Serve on a cluster.

    serve run deploy/ray-serve/serve_config.yaml        # or, from Python:
    serve.run(build_app({"num_replicas": 2, "num_gpus": 1}))

The FastAPI app (and so the engine) is built on the replica, not in the driver: nothing heavy
is created by :func:`build_app`, which only describes the deployment graph.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application

# Options of the Serve deployment itself; everything else is an InferenceSettings field
# (model_dir, max_loras, registry_url, …), also settable as TUNEFLEET_INFERENCE_* variables.
SERVE_OPTIONS = ("num_replicas", "num_gpus", "num_cpus", "max_ongoing_requests")


def build_asgi(settings_overrides: dict[str, Any]) -> FastAPI:
    """The inference app of one replica: settings from the environment plus overrides."""
    from services.inference.app import create_app
    from services.inference.engine.base import EngineConfig
    from services.inference.engine.vllm_engine import VllmEngine
    from services.inference.settings import InferenceSettings
    from shared.settings import load_settings

    settings = load_settings(InferenceSettings, **settings_overrides)
    engine = VllmEngine(
        EngineConfig(
            model_path=settings.base_dir(),
            model_id=settings.base_model,
            max_model_len=settings.max_model_len,
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_lora_rank=settings.max_lora_rank,
            kv_cache_gib=settings.kv_cache_gib,
            max_num_seqs=settings.max_num_seqs,
            device=settings.device,  # type: ignore[arg-type]
        )
    )
    return create_app(settings, engine)  # its lifespan starts and stops the engine


@serve.ingress()
class InferenceReplica:
    """One Serve replica = one inference app with its own engine and adapter cache."""

    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        self.settings_overrides = dict(settings_overrides or {})

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_asgi(self.settings_overrides)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (``serve run tunefleet_serve:build_app key=value …``)."""
    args = dict(args or {})
    serve_opts = {k: args.pop(k) for k in SERVE_OPTIONS if k in args}
    num_gpus = float(serve_opts.pop("num_gpus", 0))
    num_cpus = float(serve_opts.pop("num_cpus", 1))
    deployment = serve.deployment(
        InferenceReplica,
        name="tunefleet-inference",
        num_replicas=int(serve_opts.pop("num_replicas", 1)),
        max_ongoing_requests=int(serve_opts.pop("max_ongoing_requests", 64)),
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
        health_check_period_s=10,
        graceful_shutdown_timeout_s=60,  # the app drains in-flight requests on shutdown
    )
    if num_gpus > 0:
        args.setdefault("device", "cuda")
    return deployment.bind(args)
