"""Running a service app under uvicorn the same way everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.loopwatch import LoopWatch
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
STARTUP_FAILURE = 3


def loop_factory(
    config: uvicorn.Config, slow_callback_ms: float | None
) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvicorn's event loop (uvloop when installed); with ``slow_callback_ms``, in asyncio
    debug mode, logging ``Executing <callback> took N seconds`` for every callback that holds
    the loop longer than that (a blocking call in an ``async`` handler)."""
    base = config.get_loop_factory() or asyncio.new_event_loop

    def make() -> asyncio.AbstractEventLoop:
        loop = base()
        if slow_callback_ms is not None:
            loop.set_debug(True)
            loop.slow_callback_duration = slow_callback_ms / 1000
        return loop

    return make


def serve(
    service: str,
    app: FastAPI,
    settings: ServiceSettings,
    *,
    tls: tuple[Path, Path] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> None:
    """Serve on ``settings.host:port`` (127.0.0.1 unless told otherwise) with JSON logs;
    HTTPS with ``tls`` (certificate file, key file), ``headers`` added to every answer."""
    configure_logging(service, settings.log_level, json_format=settings.log_json)
    log.info(
        "starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "tls": tls is not None,
            "slow_callback_ms": settings.slow_callback_ms,
        },
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        headers=headers or [],
    )
    server = uvicorn.Server(config)
    original = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        # /readyz answers 503 at once, and long polls (the registry's change feed) return
        # instead of holding the graceful shutdown for their whole wait
        app.state.draining = True
        original(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]

    async def main() -> None:
        watch = None
        if settings.slow_callback_ms is not None:
            watch = LoopWatch(asyncio.get_running_loop(), settings.slow_callback_ms / 1000)
            watch.start()
        try:
            await server.serve()
        finally:
            if watch is not None:
                watch.stop()

    # uvicorn.run without its debug=False, which would switch PYTHONASYNCIODEBUG off
    factory = loop_factory(config, settings.slow_callback_ms)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as run:
        run.run(main())
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run: a failed startup is exit status 3
