"""``GET /v1/models`` and ``GET /v1/models/{id}`` over a fleet whose replicas serve different
bases: each replica lists the base it serves (plus the tenant's own bases and adapters), so
the gateway asks one ready replica per distinct set of announced bases and answers with the
union, deduplicated by id, served bases first. A lookup is answered by the first replica that
knows the model. Tenant scoping stays the replicas' (each lists what the tenant may call).

A replica that fails is left out while another answers; with none answering, the first error
is the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi.responses import JSONResponse

from gateway.domain.routing import Replica
from gateway.domain.upstream import Upstream
from shared.errors import ServiceUnavailable, TunefleetError, error_from_envelope

log = logging.getLogger(__name__)


async def _ask(
    upstream: Upstream, replica: Replica, path: str, headers: dict[str, str]
) -> tuple[int, Any]:
    resp = await upstream.open("GET", f"{replica.url}{path}", headers=headers, service="inference")
    try:
        raw = await resp.aread()
    finally:
        await resp.aclose()
    try:
        return resp.status_code, json.loads(raw or b"null")
    except ValueError:
        return resp.status_code, None


async def _ask_all(
    upstream: Upstream, key: str, path: str, headers: dict[str, str]
) -> tuple[list[Any], TunefleetError | None]:
    """The 200 bodies of one replica per base set, best for ``key`` first; the first error."""
    await upstream.replicas.pick(key)  # 503 when no replica is ready
    replicas = upstream.replicas.covering(key)
    answers = await asyncio.gather(
        *(_ask(upstream, r, path, headers) for r in replicas), return_exceptions=True
    )
    bodies: list[Any] = []
    first: TunefleetError | None = None
    for replica, answer in zip(replicas, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, TunefleetError):
                raise answer
            if isinstance(answer, ServiceUnavailable):
                upstream.replicas.mark_down(replica)
            first = first or answer
            continue
        status, body = answer
        if status != 200:
            first = first or error_from_envelope(status, body)
            continue
        bodies.append(body)
    return bodies, first


def _union(pages: list[Any]) -> list[dict[str, Any]]:
    """Each replica's served base (its first card) first, then the rest in order, by id."""
    lists = [p.get("data") or [] for p in pages if isinstance(p, dict)]
    cards: dict[str, dict[str, Any]] = {}
    for card in [c[0] for c in lists if c] + [card for c in lists for card in c]:
        if isinstance(card, dict) and isinstance(card.get("id"), str):
            cards.setdefault(card["id"], card)
    return list(cards.values())


async def list_models(upstream: Upstream, key: str, headers: dict[str, str]) -> JSONResponse:
    pages, error = await _ask_all(upstream, key, "/v1/models", headers)
    if not pages:
        assert error is not None
        raise error
    if error is not None:
        log.warning("model listing without a replica", extra={"error": error.code})
    return JSONResponse({"object": "list", "data": _union(pages), "has_more": False})


async def retrieve_model(
    upstream: Upstream, key: str, path: str, headers: dict[str, str]
) -> JSONResponse:
    cards, error = await _ask_all(upstream, key, path, headers)
    if not cards:
        assert error is not None
        raise error
    return JSONResponse(cards[0])
