"""Base-model catalog and model resolution routes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query

from services.registry.deps import State
from services.registry.domain import catalog
from services.registry.domain.resolve import resolve_model
from services.registry.domain.views import base_model_out
from shared.auth import TenantId
from shared.schemas.common import ListResponse
from shared.schemas.registry import BaseModelCreate, BaseModelOut, Resolution

router = APIRouter(tags=["catalog"])


@router.get("/v1/base-models", response_model=ListResponse[BaseModelOut])
def list_base_models(st: State, tenant: TenantId) -> ListResponse[BaseModelOut]:
    with st.db.session() as s:
        return ListResponse(data=[base_model_out(r) for r in catalog.list_models(s, tenant)])


@router.get("/v1/base-models/{model_id}", response_model=BaseModelOut)
def get_base_model(model_id: str, st: State, tenant: TenantId) -> BaseModelOut:
    with st.db.session() as s:
        return base_model_out(catalog.get_model(s, tenant, model_id, param="model_id"))


@router.post("/v1/base-models", response_model=BaseModelOut, status_code=201)
def add_base_model(body: BaseModelCreate, st: State, tenant: TenantId) -> BaseModelOut:
    """Admins add any local HF model directory; the gateway restricts this to role admin.

    The ``system`` tenant registers fleet-wide models; any other tenant registers its own
    (e.g. a full fine-tune served as a new base).
    """
    with st.db.session(write=True) as s:
        row = catalog.register_model(
            s,
            model_id=body.id,
            path=Path(body.path),
            owner=tenant,
            hub_id=body.hub_id,
            revision=body.revision,
            max_context=body.max_context,
        )
        return base_model_out(row)


@router.delete("/v1/base-models/{model_id}")
def delete_base_model(model_id: str, st: State, tenant: TenantId) -> dict[str, object]:
    """Remove the tenant's own base model (a full fine-tune) from the catalog, e.g. when
    the data it was trained on is erased; its weights are the training service's."""
    with st.db.session(write=True) as s:
        catalog.delete_model(s, tenant, model_id)
    return {"id": model_id, "object": "base_model", "deleted": True}


@router.get("/v1/resolve", response_model=Resolution)
def resolve(
    st: State, tenant: TenantId, model: Annotated[str, Query(max_length=200)]
) -> Resolution:
    with st.db.session() as s:
        return resolve_model(s, tenant, model)
