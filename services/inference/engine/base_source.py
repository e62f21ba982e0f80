"""Where a replica's base model comes from: its own models directory, or the registry.

``base_source = "registry"`` serves a tenant's uploaded base (a merged fine-tune) by id: the
archive is downloaded with the internal token, verified against the catalog's sha256 and
unpacked under this replica's home (``shared.models.download``) before the engine is built,
so the engine, the adapter checks and ``/readyz`` all see one local directory.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx

from services.inference.settings import InferenceSettings
from shared.clients.registry import RegistryClient
from shared.models.download import fetch_base_model


async def materialize_base(
    settings: InferenceSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> InferenceSettings:
    """``settings`` with ``model_dir`` set to the fetched base (unchanged for ``dir``)."""
    if settings.base_source != "registry":
        return settings
    registry = RegistryClient(settings.registry_url, settings.resolved_token(), transport=transport)
    try:
        path = await fetch_base_model(
            registry, settings.base_owner, settings.base_model, settings.bases_dir()
        )
    finally:
        await registry.aclose()
    return settings.model_copy(update={"model_dir": path})


def materialize_base_sync(settings: InferenceSettings) -> InferenceSettings:
    """The same from sync start-up code, which may run inside an event loop (Ray Serve)."""
    if settings.base_source != "registry":
        return settings
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, materialize_base(settings)).result()
