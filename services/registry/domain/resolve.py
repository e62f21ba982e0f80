"""Turning a client's ``model`` string into an immutable, servable identity."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.domain import catalog
from services.registry.domain.adapters import find_adapter
from services.registry.storage.tables import AliasRow, BaseModelRow, VersionRow
from shared.errors import NotFound
from shared.modelref import parse_model, version_ref
from shared.schemas.registry import Resolution


def _not_found(model: str, why: str) -> NotFound:
    return NotFound(f"model {model!r} not found: {why}", param="model", code="model_not_found")


def resolve_model(s: Session, tenant: str, model: str) -> Resolution:
    """``tiny-llama`` → base; ``name`` → alias production; ``name@3``; ``name@staging``."""
    base = s.scalars(
        select(BaseModelRow).where(BaseModelRow.id == model, catalog.visible(tenant))
    ).first()
    if base is not None:
        return Resolution(model=model, kind="base", base_model=base.id, ref=base.id)
    ref = parse_model(model)
    adapter = find_adapter(s, tenant, ref.name)
    if adapter is None:
        raise _not_found(model, "no base model or adapter has this name")
    number = ref.version
    if number is None:
        alias = s.get(AliasRow, (adapter.id, ref.alias))
        if alias is None:
            raise _not_found(
                model,
                f"adapter {ref.name!r} has no alias {ref.alias!r}; "
                f"name a version ({ref.name}@1) or move the alias first",
            )
        number = alias.version
    version = s.scalars(
        select(VersionRow).where(VersionRow.adapter_id == adapter.id, VersionRow.number == number)
    ).first()
    if version is None:
        raise _not_found(model, f"adapter {ref.name!r} has no version {number}")
    return Resolution(
        model=model,
        kind="adapter",
        base_model=version.base_model,
        ref=version_ref(tenant, adapter.name, number),
        tenant=tenant,
        adapter=adapter.name,
        version=number,
        alias=ref.alias,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        rank=version.rank,
        target_modules=list(version.target_modules),
        archive_path=f"/v1/adapters/{adapter.name}/versions/{number}/archive",
    )
