"""The adapter cache: which immutable adapter versions are loaded into the engine.

* Single-flight: one download + validation + ``add_adapter`` per version, however many
  requests wait for it; the load runs as its own task, shielded from the waiters'
  cancellation, so a client that disconnects cannot leave a half-loaded adapter.
* Verified: the archive's sha256 is checked on download and the adapter is validated against
  the engine's base model (rank, target modules, shapes) *before* vLLM sees it — a bad
  LoRARequest kills the engine, a refused one is a 422 for one request.
* LRU with pinning: beyond ``capacity`` the least recently used, unpinned, idle adapter is
  removed from the engine, and only then are its files deleted (the engine never loads from a
  path we removed). ``capacity`` stays within vLLM's ``max_cpu_loras`` so vLLM never evicts
  (and later reloads from disk) behind our back.
* Keyed on the content: an entry (and its unpacked directory) is the pair (ref, sha256), so a
  ref whose meaning changed (an adapter deleted and re-created before the version counter
  existed, a lost ``adapter.deleted``) loads the new weights instead of serving the old ones;
  ``forget`` drops a deleted adapter's entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio

from services.inference.engine.base import AdapterHandle, AdapterLoadError, InferenceEngine
from shared.adapters.archive import BaseModelSpec, validate_archive
from shared.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    TunefleetError,
    Unprocessable,
)
from shared.schemas.registry import Resolution

log = logging.getLogger(__name__)

Fetch = Callable[[Resolution, Path], Awaitable[Path]]
"""Download the archive of ``resolution`` to the given path, verified by sha256."""

CacheKey = tuple[str, str]
"""(ref, sha256): the weights a ref named when it was loaded."""


def cache_key(res: Resolution) -> CacheKey:
    return (res.ref, res.sha256 or "")


def adapter_dir_name(ref: str, sha256: str) -> str:
    """The unpacked directory of (ref, sha256): one per pair, never shared.

    The readable part alone is not one-to-one (the old ``/``/``@`` → ``__`` made
    ``acme/x__y@v1`` and ``acme__x/y@v1`` one directory: with equal bytes, evicting one
    tenant's adapter deleted the files the other's was loaded from, and their loads shared a
    staging directory), so a digest of the ref itself and the whole content hash follow it.
    """
    readable = re.sub(r"[^a-z0-9._-]", "+", ref.lower())[:100]
    ref_digest = hashlib.sha256(ref.encode()).hexdigest()[:16]
    return f"{readable}-{ref_digest}-{sha256}"


@dataclass
class LoadedAdapter:
    handle: AdapterHandle
    sha256: str
    loaded_at: float
    load_seconds: float
    last_used: float
    pinned: bool = False
    in_use: int = 0
    requests: int = field(default=0)


class AdapterCache:
    def __init__(
        self,
        engine: InferenceEngine,
        fetch: Fetch,
        *,
        root: Path,
        base: BaseModelSpec,
        max_rank: int,
        capacity: int,
        on_load: Callable[[str, float], None] | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.fetch = fetch
        self.root = root
        self.base = base
        self.max_rank = max_rank
        self.capacity = capacity
        self._loaded: dict[CacheKey, LoadedAdapter] = {}
        self._loading: dict[CacheKey, asyncio.Task[LoadedAdapter]] = {}
        self._lock = asyncio.Lock()
        self._on_load = on_load or (lambda ref, s: None)
        self._on_evict = on_evict or (lambda ref: None)
        root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ queries
    def loaded(self) -> list[LoadedAdapter]:
        return sorted(self._loaded.values(), key=lambda a: a.handle.ref)

    def get(self, ref: str) -> LoadedAdapter | None:
        """The newest loaded entry of ``ref`` (whatever its content)."""
        entries = [a for a in self._loaded.values() if a.handle.ref == ref]
        return max(entries, key=lambda a: a.loaded_at) if entries else None

    # ------------------------------------------------------------------ use
    @asynccontextmanager
    async def use(self, res: Resolution) -> AsyncIterator[AdapterHandle]:
        """Hold a loaded adapter for the duration of one request (never evicted meanwhile)."""
        entry = await self.ensure(res)
        while self._loaded.get(cache_key(res)) is not entry:
            # Evicted between its load finishing and this waiter resuming: load it again
            # rather than hand vLLM a handle whose files are gone.
            entry = await self.ensure(res)
        entry.in_use += 1
        entry.requests += 1
        entry.last_used = time.time()
        try:
            yield entry.handle
        finally:
            entry.in_use -= 1
            entry.last_used = time.time()

    async def ensure(self, res: Resolution) -> LoadedAdapter:
        """The loaded adapter for ``res``, loading it (once) if needed."""
        key = cache_key(res)
        entry = self._loaded.get(key)
        if entry is not None:
            return entry
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(res), name=f"load {res.ref}")
            self._loading[key] = task
            task.add_done_callback(partial(self._load_finished, key))
        return await asyncio.shield(task)

    def _load_finished(self, key: CacheKey, _task: asyncio.Task[LoadedAdapter]) -> None:
        self._loading.pop(key, None)

    # ------------------------------------------------------------------ admin
    def pin(self, ref: str, pinned: bool = True) -> LoadedAdapter:
        entry = self.get(ref)
        if entry is None:
            raise NotFound(
                f"adapter {ref!r} is not loaded on this replica",
                param="ref",
                code="adapter_not_loaded",
            )
        entry.pinned = pinned
        return entry

    async def unload(self, ref: str) -> None:
        async with self._lock:
            entry = self.get(ref)
            if entry is None:
                raise NotFound(
                    f"adapter {ref!r} is not loaded on this replica",
                    param="ref",
                    code="adapter_not_loaded",
                )
            await self._evict(entry)

    async def forget(self, tenant: str, adapter: str) -> int:
        """Unload the idle versions of a deleted adapter (``tenant/adapter@vN``); one still
        serving a request is left to the LRU (its key holds its sha256: it never answers for
        other weights)."""
        prefix = f"{tenant}/{adapter}@"
        async with self._lock:
            doomed = [
                a
                for a in self._loaded.values()
                if a.handle.ref.startswith(prefix) and a.in_use == 0
            ]
            for entry in doomed:
                await self._evict(entry)
        return len(doomed)

    async def close(self) -> None:
        """Unload every adapter (the engine may outlive this cache, e.g. in tests)."""
        async with self._lock:
            for task in list(self._loading.values()):
                task.cancel()
            for entry in list(self._loaded.values()):
                await self._evict(entry)

    # ------------------------------------------------------------------ internals
    def _dir_for(self, res: Resolution) -> Path:
        return self.root / adapter_dir_name(res.ref, res.sha256 or "")

    async def _load(self, res: Resolution) -> LoadedAdapter:
        start = time.perf_counter()
        if res.kind != "adapter" or not res.sha256:
            raise TunefleetError(f"{res.ref} is not an adapter")
        if res.base_model != self.base.id:
            raise AdapterLoadError(
                f"{res.ref} was trained for base model {res.base_model!r}; this replica serves "
                f"{self.base.id!r}",
                ref=res.ref,
                reason="base_model_mismatch",
            )
        final = self._dir_for(res)
        work = final.with_name(final.name + ".staging")
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
        work.mkdir(parents=True)
        try:
            try:
                archive = await self.fetch(res, work / "archive.tar.gz")
                adapter_dir, _info = await anyio.to_thread.run_sync(
                    lambda: validate_archive(archive, work, self.base, max_rank=self.max_rank)
                )
            except (NotFound, InvalidRequest, PayloadTooLarge, Unprocessable) as exc:
                if isinstance(exc, AdapterLoadError):
                    raise
                # The adapter, not the client's request, is at fault: 422 for this request,
                # and the engine never saw it.
                raise AdapterLoadError(
                    f"adapter {res.ref} cannot be served: {exc.message}",
                    ref=res.ref,
                    reason=exc.code,
                ) from exc
            if final.exists():  # left by an earlier, interrupted life; content is verified
                await anyio.to_thread.run_sync(shutil.rmtree, final)
            adapter_dir.rename(final)
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(work, ignore_errors=True))
        async with self._lock:
            await self._make_room()
            handle = AdapterHandle(ref=res.ref, int_id=self.engine.new_adapter_id(), path=final)
            try:
                await self.engine.add_adapter(handle)
            except BaseException:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(final, ignore_errors=True))
                raise
            now = time.time()
            elapsed = time.perf_counter() - start
            entry = LoadedAdapter(
                handle=handle, sha256=res.sha256, loaded_at=now, load_seconds=elapsed, last_used=now
            )
            self._loaded[cache_key(res)] = entry
            # the ref now names other weights: its old, idle entries go
            for old in [
                a
                for k, a in self._loaded.items()
                if k[0] == res.ref and a is not entry and a.in_use == 0
            ]:
                await self._evict(old)
        self._on_load(res.ref, elapsed)
        log.info("adapter loaded", extra={"ref": res.ref, "seconds": round(elapsed, 3)})
        return entry

    async def _make_room(self) -> None:
        """Evict LRU idle, unpinned adapters until one more fits (caller holds the lock)."""
        while len(self._loaded) >= self.capacity:
            idle = [a for a in self._loaded.values() if not a.pinned and a.in_use == 0]
            if not idle:
                # Everything is pinned or busy: go over capacity rather than fail a request;
                # vLLM's own max_cpu_loras then bounds memory.
                log.warning("adapter cache over capacity", extra={"loaded": len(self._loaded)})
                return
            await self._evict(min(idle, key=lambda a: a.last_used))

    async def _evict(self, entry: LoadedAdapter) -> None:
        self._loaded.pop((entry.handle.ref, entry.sha256), None)
        await self.engine.remove_adapter(entry.handle)
        # Only now, with the engine no longer able to load it, may the files go.
        path = entry.handle.path
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))
        self._on_evict(entry.handle.ref)
        log.info("adapter evicted", extra={"ref": entry.handle.ref})
