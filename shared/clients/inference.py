"""Typed async client for an inference replica's internal routes (used by the gateway).

Generations themselves go through the gateway's lean hop (``gateway.domain.upstream``): their
bodies and answers are relayed unparsed. This client is for the calls whose answers the
gateway reads."""

from __future__ import annotations

from urllib.parse import quote

from shared.clients.base import ServiceClient
from shared.errors import NotFound
from shared.schemas.openai import AbandonedUsageOut


class InferenceClient(ServiceClient):
    service = "inference"

    async def abandoned_usage(self, tenant: str, request_id: str) -> AbandonedUsageOut | None:
        """What the tenant's non-streamed call ``request_id`` generated on this replica before
        its caller left; None if the replica kept nothing for it (not abandoned there, not
        yet recorded, or forgotten)."""
        path = f"/v1/internal/abandoned/{quote(request_id, safe='')}"
        try:
            body = await self.json("GET", path, tenant=tenant)
        except NotFound:
            return None
        return AbandonedUsageOut.model_validate(body)
