"""Gateway dependencies: the caller's identity and the shared state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

import anyio
import httpx
from fastapi import Depends, Request

from gateway.domain.feedback import FeedbackBook
from gateway.domain.keys import Principal, authenticate, hash_key
from gateway.domain.quotas import Quotas
from gateway.domain.resolver import ModelResolver
from gateway.domain.routing import ReplicaSet
from gateway.domain.usage import UsageRecorder
from gateway.settings import GatewaySettings
from shared.clients.registry import RegistryClient
from shared.clients.training import TrainingClient
from shared.db import Database
from shared.logging import tenant_var

AUTH_CACHE_S = 2.0  # a revoked key stops working within this long (and at once on this node)


@dataclass
class GatewayState:
    settings: GatewaySettings
    db: Database
    key_secret: str
    internal_token: str
    upstream: httpx.AsyncClient  # inference traffic (streams) and raw proxying
    training: TrainingClient  # typed calls the gateway makes itself
    registry: RegistryClient
    replicas: ReplicaSet
    quotas: Quotas
    resolver: ModelResolver
    feedback: FeedbackBook
    usage: UsageRecorder
    auth_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)


async def gateway_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a sync dependency in the thread pool, a hop per request
    st: GatewayState = request.app.state.gateway
    return st


State = Annotated[GatewayState, Depends(gateway_state)]


async def principal(request: Request, st: State) -> Principal:
    """Authenticate the API key (cached briefly by its hash) and tag logs with the tenant."""
    header = request.headers.get("authorization", "")
    cache_key = hash_key(st.key_secret, header)
    hit = st.auth_cache.get(cache_key)
    if hit is not None and hit[1] > time.monotonic():
        who = hit[0]
    else:

        def lookup() -> Principal:
            with st.db.session() as s:
                return authenticate(s, st.key_secret, header)

        who = await anyio.to_thread.run_sync(lookup)
        st.auth_cache[cache_key] = (who, time.monotonic() + AUTH_CACHE_S)
    tenant_var.set(who.tenant)
    request.state.principal = who
    return who


Caller = Annotated[Principal, Depends(principal)]
