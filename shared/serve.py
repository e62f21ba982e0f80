"""Running a service app under uvicorn the same way everywhere."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import ServiceSettings


def serve(service: str, app: FastAPI, settings: ServiceSettings) -> None:
    """Serve on ``settings.host:port`` (127.0.0.1 unless told otherwise) with JSON logs."""
    configure_logging(service, settings.log_level, json_format=settings.log_json)
    logging.getLogger(__name__).info(
        "starting", extra={"host": settings.host, "port": settings.port}
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
