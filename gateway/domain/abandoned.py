"""Billing a non-streamed generation its client abandoned with what the replica generated.

The gateway closes the upstream call when its client goes away, which cancels the generation
on the replica; the answer (and its usage) never arrives. The replica keeps what it generated
under the request id (``services.inference.domain.abandoned``), so the gateway fetches it
from that replica, off the request path (a background task, a few short tries: the replica
records it once its handler has seen the close), and bills prompt + generated completion
tokens. If the replica has nothing (unreachable, an older replica, the call finished there
just as the client left), the prompt's estimate is billed, as before, and that is logged.
Either way the request is charged once (``Admission.settle``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from shared.clients.inference import InferenceClient
from shared.errors import TunefleetError
from shared.schemas.openai import AbandonedUsageOut

log = logging.getLogger(__name__)

Bill = Callable[[int, int], None]  # (prompt tokens, completion tokens)


class AbandonedBilling:
    def __init__(
        self,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 8,
        interval_s: float = 0.25,
        timeout_s: float = 2.0,
    ) -> None:
        """Tries ``attempts`` times, ``interval_s`` apart, each bounded by ``timeout_s``."""
        self.token = token
        self.transport = transport
        self.attempts = attempts
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def later(
        self, replica_url: str, tenant: str, request_id: str, fallback: tuple[int, int], bill: Bill
    ) -> None:
        """Bill the call in the background: what ``replica_url`` generated, else ``fallback``."""
        task = asyncio.get_running_loop().create_task(
            self._settle(replica_url, tenant, request_id, fallback, bill)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(
        self, url: str, tenant: str, request_id: str, fallback: tuple[int, int], bill: Bill
    ) -> None:
        counted: AbandonedUsageOut | None = None
        try:
            counted = await self.fetch(url, tenant, request_id)
        finally:  # a gateway shutting down bills the estimate rather than nothing
            if counted is None:
                log.warning(
                    "abandoned generation billed its prompt estimate: the replica reported "
                    "no count",
                    extra={"replica": url, "tenant": tenant},
                )
                bill(*fallback)
            else:
                bill(counted.prompt_tokens, counted.completion_tokens)

    async def fetch(self, url: str, tenant: str, request_id: str) -> AbandonedUsageOut | None:
        """The replica's count, retried briefly (it records it when its handler ends)."""
        client = InferenceClient(
            url, self.token, transport=self.transport, timeout=self.timeout_s, retries=1
        )
        try:
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.interval_s)
                try:
                    counted = await client.abandoned_usage(tenant, request_id)
                except TunefleetError:  # unreachable or failing: try again, then give up
                    continue
                if counted is not None:
                    return counted
            return None
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Cancel the fetches still running (each bills its estimate)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
