"""Choosing an inference replica: rendezvous hashing over the healthy ones that serve the
request's base model.

Each replica announces the base models it serves in its ready answer (``/readyz``:
``{"status": "ready", "bases": [...]}``), read by the health loop. A request goes only to a
replica serving its base; when none does (while some replica is up), it is 503
``base_model_unavailable`` with ``Retry-After``, naming the base. A replica that has not
announced its bases yet (never probed, or an older version) is taken to serve any.

The same model key (the immutable version) always lands on the same replica while it is
healthy, so each adapter stays warm on few replicas; when a replica goes down only its keys
move. Spill-over: a replica also announces how many sequences it runs at once
(``max_running``); once a key's first replica has that many generations open, the next one
goes to the least busy replica of the same base that has room (one hot model then uses a
second replica instead of queueing on the first). "Open" counts every gateway's: a replica
reports what it runs (``running`` in its ready answer, ``X-Tunefleet-Replica-Running`` on
every answer); what this gateway had open at that report is known, so the rest is the other
gateways' load, added to this gateway's live count until the report is ``REPORT_TTL_S`` old.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import ServiceUnavailable

log = logging.getLogger(__name__)


PROBE_FAILURES_TO_DROP = 2  # a slow probe on a busy box must not move every adapter
REPORT_TTL_S = 5.0  # how long a replica's report of the other gateways' load is believed


@dataclass
class Replica:
    url: str
    healthy: bool = True
    failures: int = 0
    bases: frozenset[str] | None = None  # None: not announced yet (may serve any)
    capacity: int | None = None  # sequences it runs at once (announced); None: unknown
    in_flight: int = 0  # generations this gateway has open on it
    others: int = 0  # the other gateways' generations on it, as of its last report
    reported_at: float = -math.inf  # monotonic time of that report

    def report(self, running: str | int | None, *, own: int | None = None) -> None:
        """The replica said it runs ``running`` sequences while this gateway had ``own``
        (default: now) open on it."""
        try:
            n = int(running)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        self.others = max(0, n - (self.in_flight if own is None else own))
        self.reported_at = time.monotonic()

    def load(self) -> int:
        """Generations open on it, every gateway's (the others' while their report is fresh)."""
        fresh = time.monotonic() - self.reported_at < REPORT_TTL_S
        return self.in_flight + (self.others if fresh else 0)

    def full(self) -> bool:
        return self.capacity is not None and self.load() >= self.capacity

    def serves(self, base: str | None) -> bool:
        return base is None or self.bases is None or base in self.bases


def _score(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest(), "big")


def _announced(resp: httpx.Response) -> tuple[frozenset[str] | None, int | None, Any]:
    """(bases, capacity, running) from a replica's ready answer; None for what it does not
    say."""
    try:
        info = resp.json()
    except ValueError:
        return None, None, None
    if not isinstance(info, dict):
        return None, None, None
    bases = info.get("bases")
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        bases = None
    capacity = info.get("max_running")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        capacity = None
    running = info.get("running")
    return (None if bases is None else frozenset(bases)), capacity, running


class ReplicaSet:
    def __init__(self, urls: list[str], http: httpx.AsyncClient, *, interval_s: float = 2.0):
        self.replicas = [Replica(u.rstrip("/")) for u in urls]
        self.http = http
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def ranked(self, key: str, base: str | None = None) -> list[Replica]:
        """Healthy replicas serving ``base``, best first for ``key``; raises 503 when none is
        healthy, or none of the healthy ones serves ``base``."""
        healthy = [r for r in self.replicas if r.healthy]
        if not healthy:
            raise ServiceUnavailable(
                "no inference replica is available", retry_after=2, code="inference_unavailable"
            )
        serving = [r for r in healthy if r.serves(base)]
        if not serving:
            raise ServiceUnavailable(
                f"no inference replica serves base model {base!r} at the moment; the operator "
                "deploys replicas per base",
                retry_after=10,
                code="base_model_unavailable",
            )
        ranked = sorted(serving, key=lambda r: _score(key, r.url), reverse=True)
        if ranked[0].full():  # spill over to the least busy one with room, if any
            room = [r for r in ranked[1:] if not r.full()]
            if room:
                spill = min(room, key=lambda r: r.load())
                ranked.remove(spill)
                ranked.insert(0, spill)
        return ranked

    def covering(self, key: str) -> list[Replica]:
        """One healthy replica per distinct set of announced bases (and each one that has
        not announced), best for ``key`` first: enough to see every base the fleet serves."""
        seen: set[frozenset[str]] = set()
        out: list[Replica] = []
        for r in self.ranked(key):
            if r.bases is None or r.bases not in seen:
                out.append(r)
                if r.bases is not None:
                    seen.add(r.bases)
        return out

    async def pick(self, key: str, base: str | None = None) -> list[Replica]:
        """Like ``ranked``, but when no replica serving ``base`` is up, probe them all once
        more right now: a replica that just became ready is used without waiting for the
        loop."""
        if not any(r.healthy and r.serves(base) for r in self.replicas):
            await self.check_once()
        return self.ranked(key, base)

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
                own = r.in_flight  # what was open here while the replica counted
                resp = await self.http.get(f"{r.url}/readyz", timeout=2.0)
                ok = resp.status_code == 200
                if ok:
                    r.bases, r.capacity, running = _announced(resp)
                    r.report(running, own=min(own, r.in_flight))
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
