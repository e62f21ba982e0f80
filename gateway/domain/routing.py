"""Choosing an inference replica: rendezvous hashing over the healthy ones.

The same model key (tenant + model) always lands on the same replica while it is healthy, so
each adapter stays warm on few replicas; when a replica goes down only its keys move.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import httpx

from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)


PROBE_FAILURES_TO_DROP = 2  # a slow probe on a busy box must not move every adapter


@dataclass
class Replica:
    url: str
    healthy: bool = True
    failures: int = 0


def _score(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest(), "big")


class ReplicaSet:
    def __init__(self, urls: list[str], http: httpx.AsyncClient, *, interval_s: float = 2.0):
        self.replicas = [Replica(u.rstrip("/")) for u in urls]
        self.http = http
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def ranked(self, key: str) -> list[Replica]:
        """Healthy replicas, best first for ``key``; raises 503 when none is healthy."""
        healthy = [r for r in self.replicas if r.healthy]
        if not healthy:
            raise ServiceUnavailable(
                "no inference replica is available", retry_after=2, code="inference_unavailable"
            )
        return sorted(healthy, key=lambda r: _score(key, r.url), reverse=True)

    async def pick(self, key: str) -> list[Replica]:
        """Like ``ranked``, but when every replica is marked down, probe them all once more
        right now: a replica that just became ready is used without waiting for the loop."""
        if not any(r.healthy for r in self.replicas):
            await self.check_once()
        return self.ranked(key)

    def any_ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def mark_down(self, replica: Replica) -> None:
        if replica.healthy:
            log.warning("replica marked down", extra={"replica": replica.url})
        replica.healthy = False

    async def check_once(self) -> None:
        async def probe(r: Replica) -> None:
            slow = False
            try:
                ok = (await self.http.get(f"{r.url}/readyz", timeout=2.0)).status_code == 200
            except httpx.TimeoutException:
                ok, slow = False, True
            except httpx.HTTPError:
                ok = False
            if ok and not r.healthy:
                log.info("replica back", extra={"replica": r.url})
            r.failures = 0 if ok else r.failures + 1
            # Down at once when nothing listens or it says it is not ready; only after
            # repeated timeouts when it is merely slow to answer.
            r.healthy = ok or (slow and r.healthy and r.failures < PROBE_FAILURES_TO_DROP)

        await asyncio.gather(*(probe(r) for r in self.replicas))

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.check_once()
                except Exception:
                    log.exception("replica health check failed")
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop(), name="replica-health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
