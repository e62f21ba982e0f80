"""``GET /v1/models`` and ``GET /v1/models/{id}``: what a tenant can call, as OpenAI lists it.

Listed, in this order: the base model this replica serves, the tenant's own base models (full
fine-tunes: a job's ``fine_tuned_model`` when it is not a LoRA), and for each of the tenant's
adapters ``name`` (its ``production`` alias, when set), every version ``name@vN`` (the
canonical, immutable id; a LoRA job's ``fine_tuned_model``) and every alias ``name@alias``.
Retrieve accepts any form that resolves, including ``name@N``, and answers with the id as
asked; ``root`` (as in vLLM's model cards) is the immutable id it resolves to now.
Anything else is 404 ``model_not_found``, as OpenAI answers for an unknown model.
"""

from __future__ import annotations

import time

from services.inference.engine.resolver import ModelResolver
from shared.clients.registry import RegistryClient
from shared.errors import InvalidRequest, NotFound
from shared.modelref import DEFAULT_ALIAS
from shared.schemas.openai import ModelCard
from shared.schemas.registry import AdapterOut, BaseModelOut


def _not_found(model: str) -> NotFound:
    return NotFound(f"model {model!r} does not exist", param="model", code="model_not_found")


def _listed_bases(
    bases: list[BaseModelOut], tenant: str, served: str, served_owner: str = "system"
) -> list[ModelCard]:
    """The served base first, then the tenant's own bases (other system bases are served by
    other replicas, if any, and listed there). A served base the tenant's catalog does not
    show is listed only when it is the fleet's (``served_owner`` system): a replica serving
    one tenant's merged model never names it to another."""
    cards = [
        ModelCard(id=b.id, created=b.created, owned_by=b.owned_by, root=b.id)
        for b in sorted(bases, key=lambda b: b.id != served)
        if b.id == served or b.owned_by == tenant
    ]
    absent = not cards or cards[0].id != served  # not in the catalog (yet): still served
    if absent and served_owner in ("system", tenant):
        cards.insert(0, ModelCard(id=served, created=int(time.time()), owned_by=served_owner))
    return cards


def adapter_cards(a: AdapterOut) -> list[ModelCard]:
    """Every id under which adapter ``a`` can be called, canonical versions included."""
    if a.latest_version is None:
        return []

    def card(model_id: str, version: int) -> ModelCard:
        root = f"{a.name}@v{version}"
        return ModelCard(id=model_id, created=a.created, owned_by=a.owned_by, root=root)

    cards = []
    if DEFAULT_ALIAS in a.aliases:
        cards.append(card(a.name, a.aliases[DEFAULT_ALIAS]))
    cards += [card(f"{a.name}@v{v}", v) for v in range(1, a.latest_version + 1)]
    cards += [card(f"{a.name}@{alias}", v) for alias, v in sorted(a.aliases.items())]
    return cards


async def all_adapters(registry: RegistryClient, tenant: str, page: int = 100) -> list[AdapterOut]:
    """Every adapter of ``tenant``, following the registry's cursor ``page`` at a time."""
    adapters: list[AdapterOut] = []
    after: str | None = None
    for _ in range(100_000):  # a hard stop on a misbehaving cursor
        chunk = await registry.list_adapters(tenant, after=after, limit=page)
        adapters += chunk.data
        if not chunk.has_more or not chunk.data:
            break
        after = chunk.data[-1].name
    return adapters


async def list_models(
    registry: RegistryClient,
    tenant: str,
    served: str,
    *,
    page: int = 100,
    served_owner: str = "system",
) -> list[ModelCard]:
    cards = _listed_bases(await registry.list_base_models(tenant), tenant, served, served_owner)
    for a in await all_adapters(registry, tenant, page):
        cards += adapter_cards(a)
    return cards


async def retrieve_model(
    resolver: ModelResolver,
    registry: RegistryClient,
    tenant: str,
    model: str,
    served: str,
    served_owner: str = "system",
) -> ModelCard:
    try:
        res = await resolver.resolve(tenant, model)
    except (InvalidRequest, NotFound) as exc:  # a malformed name names no model either
        raise _not_found(model) from exc
    if res.kind == "base":
        listed = await registry.list_base_models(tenant)
        bases = _listed_bases(listed, tenant, served, served_owner)
        card = next((b for b in bases if b.id == res.base_model), None)
        if card is None:
            raise _not_found(model)
        return card
    assert res.adapter is not None and res.version is not None
    a = await registry.get_adapter(tenant, res.adapter)
    return ModelCard(
        id=model,
        created=a.created,
        owned_by=a.owned_by,
        root=f"{res.adapter}@v{res.version}",
    )
