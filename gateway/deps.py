"""Gateway dependencies: the caller's identity and the shared state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import Scope

from gateway.domain.audit_keys import AuditKeys
from gateway.domain.events import SeenEvents
from gateway.domain.feedback import FeedbackBook
from gateway.domain.generation import Generations
from gateway.domain.keys import Principal, authenticate, bearer_key, hash_key
from gateway.domain.pii_guard import PiiGuard
from gateway.domain.quotas import Quotas
from gateway.domain.resolver import ModelResolver
from gateway.domain.routing import ReplicaSet
from gateway.domain.upstream import Upstream
from gateway.domain.usage import UsageRecorder
from gateway.settings import GatewaySettings
from shared.clients.registry import RegistryClient
from shared.clients.training import TrainingClient
from shared.db import Database
from shared.logging import tenant_var

AUTH_CACHE_S = 2.0  # a revoked key stops working within this long (and at once on this node)
AUTH_CACHE_MAX = 10_000  # entries; only valid keys are cached, one entry per key


@dataclass
class GatewayState:
    settings: GatewaySettings
    db: Database
    key_secret: str
    audit_keys: AuditKeys
    internal_token: str
    upstream: Upstream  # the one hop to internal services: inference traffic, raw proxying
    training: TrainingClient  # typed calls the gateway makes itself
    registry: RegistryClient
    replicas: ReplicaSet
    quotas: Quotas
    resolver: ModelResolver
    feedback: FeedbackBook
    usage: UsageRecorder
    pii: PiiGuard
    generations: Generations
    seen_events: SeenEvents  # pushed and followed copies of one event are applied once
    auth_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)


async def gateway_state(request: Request) -> GatewayState:
    # async on purpose: FastAPI runs a sync dependency in the thread pool, a hop per request
    st: GatewayState = request.app.state.gateway
    return st


State = Annotated[GatewayState, Depends(gateway_state)]


async def resolve_principal(st: GatewayState, authorization: str) -> Principal:
    """The caller of an ``Authorization`` header (401 if none), cached briefly.

    The cache is keyed by the hash of the key itself, not of the raw header (whitespace or
    scheme-case variants of one key are one entry), holds only valid keys and is bounded."""
    key = bearer_key(authorization)  # 401 for a malformed header, before any lookup
    cache_key = hash_key(st.key_secret, key)
    now = time.monotonic()
    hit = st.auth_cache.get(cache_key)
    if hit is not None and hit[1] > now:
        return hit[0]

    def lookup() -> Principal:
        with st.db.session() as s:
            return authenticate(s, st.key_secret, authorization)

    who = await anyio.to_thread.run_sync(lookup)
    if len(st.auth_cache) >= AUTH_CACHE_MAX:
        for stale in [k for k, (_, until) in st.auth_cache.items() if until <= now]:
            del st.auth_cache[stale]
        if len(st.auth_cache) >= AUTH_CACHE_MAX:
            st.auth_cache.clear()
    st.auth_cache[cache_key] = (who, now + AUTH_CACHE_S)
    return who


AUTHENTICATED_PREFIXES = ("/v1/", "/admin/")
"""Paths that need an API key (``Authorization: Bearer …``); the rest (probes, metrics, docs,
console assets) are public."""


async def authenticate_before_body(scope: Scope) -> None:
    """The gateway's ``before_body`` hook (``shared.bodylimit``): a request to the public API
    is authenticated before its body is read, so an anonymous client cannot make the gateway
    read (and parse) anything. The principal is kept for the ``principal`` dependency."""
    if not scope["path"].startswith(AUTHENTICATED_PREFIXES):
        return
    st: GatewayState = scope["app"].state.gateway
    who = await resolve_principal(st, Headers(scope=scope).get("authorization", ""))
    scope.setdefault("state", {})["principal"] = who


async def principal(request: Request, st: State) -> Principal:
    """Authenticate the API key (cached briefly by its hash) and tag logs with the tenant."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):
        who = await resolve_principal(st, request.headers.get("authorization", ""))
    tenant_var.set(who.tenant)
    request.state.principal = who
    return who


Caller = Annotated[Principal, Depends(principal)]
