"""``python -m services.inference`` — one inference replica (vLLM in-process).

SIGTERM drains: ``/readyz`` turns 503 and new requests get 503, uvicorn stops accepting
connections and waits up to ``drain_timeout_s`` for in-flight ones, then the engine (and its
``VLLM::EngineCore`` child) is shut down.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from services.inference.app import create_app
from services.inference.engine.base_source import materialize_base_sync
from services.inference.settings import InferenceSettings, engine_config
from shared.logging import configure_logging
from shared.settings import load_settings


def main() -> None:
    settings = load_settings(InferenceSettings)
    configure_logging("inference", settings.log_level, json_format=settings.log_json)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(settings.kv_cache_gib))))
    from services.inference.engine.vllm_engine import VllmEngine

    settings = materialize_base_sync(settings)  # a registry base: fetched before the engine
    engine = VllmEngine(engine_config(settings))
    app = create_app(settings, engine)
    _run(app, settings)


def _run(app: FastAPI, settings: InferenceSettings) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    server = uvicorn.Server(config)
    original = server.handle_exit

    def handle_exit(sig: int, frame) -> None:  # type: ignore[no-untyped-def]
        app.state.draining = True  # readyz 503 and new requests 503 while in-flight finish
        original(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
