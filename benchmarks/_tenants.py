"""Tenant-scale multi-LoRA traffic for the benchmark: many adapters in a real registry.

``Tenants`` runs the registry app in-process (its real upload validation, storage and
archive download over ASGI), pushes every adapter once, and serves requests through the
inference service's own :class:`~services.inference.engine.adapters.AdapterCache` (LRU of
``capacity`` adapters; a miss downloads, sha-verifies and validates the archive, then loads
it into the engine), exactly as ``Server`` does per request. Traffic picks adapters from a
Zipf distribution over tenants (rank ``k`` has weight ``1 / k**s``).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN = "bench-internal-token"
TENANT = "bench"


def zipf_sample(n_items: int, n: int, s: float, seed: int) -> list[int]:
    """``n`` item indices in ``[0, n_items)``, item ``k`` drawn with weight ``1/(k+1)**s``."""
    weights = [1.0 / (k + 1) ** s for k in range(n_items)]
    return random.Random(seed).choices(range(n_items), weights=weights, k=n)


@dataclass
class Tenants:
    """Adapters pushed to an in-process registry, served through an ``AdapterCache``."""

    model_dir: Path
    archives: list[Path]
    capacity: int
    max_rank: int
    resolutions: list[Any] = field(default_factory=list)
    cache: Any = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _home: Path | None = None
    _fetch: Any = None
    _spec: Any = None

    async def start(self) -> None:
        import httpx
        from asgi_lifespan import LifespanManager

        from services.registry.app import create_app
        from services.registry.settings import RegistrySettings
        from shared.adapters.archive import BaseModelSpec, linear_shapes_from_model_dir
        from shared.clients.registry import RegistryClient
        from shared.schemas.registry import VersionMetadata

        self._home = Path(tempfile.mkdtemp(prefix="tf-bench-tenants-"))
        models = self._home / "models"
        models.mkdir()
        (models / self.model_dir.name).symlink_to(self.model_dir.resolve())
        app = create_app(
            RegistrySettings(home=self._home, internal_token=TOKEN, seed_models_dir=models)
        )
        await self._stack.enter_async_context(LifespanManager(app, startup_timeout=120))
        client = RegistryClient(
            "http://registry", TOKEN, transport=httpx.ASGITransport(app=app), timeout=120
        )
        self._stack.push_async_callback(client.aclose)
        meta = VersionMetadata(base_model=self.model_dir.name)
        for i, archive in enumerate(self.archives):
            await client.push_version(TENANT, f"tenant-{i:03d}", archive, meta)
        self.resolutions = [
            await client.resolve(TENANT, f"tenant-{i:03d}@1") for i in range(len(self.archives))
        ]

        async def fetch(res: Any, dest: Path) -> Path:
            return await client.download_archive(
                res.tenant, res.adapter, res.version, dest, sha256=res.sha256
            )

        path = self.model_dir
        self._fetch = fetch
        self._spec = BaseModelSpec(
            id=path.name,
            names=(path.name, str(path), str(path.resolve())),
            linear_shapes=linear_shapes_from_model_dir(path),
        )

    def open_cache(self, engine: Any) -> None:
        """A fresh, empty adapter cache (each round starts cold, then warms up)."""
        from services.inference.engine.adapters import AdapterCache

        assert self._home is not None
        self.cache = AdapterCache(
            engine,
            self._fetch,
            root=self._home / "inference-adapters",
            base=self._spec,
            max_rank=self.max_rank,
            capacity=self.capacity,
        )

    async def close_cache(self) -> None:
        """Unload every adapter of the cache from the engine (and delete its files)."""
        if self.cache is not None:
            await self.cache.close()
            self.cache = None

    def use(self, index: int) -> Any:
        """``async with tenants.use(i) as handle``: adapter ``i``, loaded on demand."""
        return self.cache.use(self.resolutions[index])

    def is_cold(self, index: int) -> bool:
        """Whether adapter ``index`` must be fetched and loaded before it can serve."""
        return self.cache.get(self.resolutions[index].ref) is None

    async def close(self) -> None:
        try:
            await self.close_cache()
            await self._stack.aclose()
        finally:
            if self._home is not None:
                await asyncio.to_thread(shutil.rmtree, self._home, True)
