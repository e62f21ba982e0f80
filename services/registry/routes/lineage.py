"""``GET /v1/lineage``: adapter versions trained on given jobs, datasets or files (internal
token; the gateway's erasure report). Spans tenants unless ``X-Tenant-Id`` narrows it, since
a data subject's erasure does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from services.registry.deps import State
from services.registry.domain.lineage import versions_using
from services.registry.domain.views import version_out
from shared.auth import tenant_header
from shared.errors import InvalidRequest
from shared.schemas.registry import LineageHit, LineageList

router = APIRouter(tags=["lineage"])
MAX_IDS = 200  # per query parameter; the gateway asks in batches
Ids = Annotated[list[str], Query(max_length=MAX_IDS)]


@router.get("/v1/lineage", response_model=LineageList)
def lineage(
    st: State,
    job: Ids = [],  # noqa: B006 - FastAPI copies query defaults
    dataset: Ids = [],  # noqa: B006
    file: Ids = [],  # noqa: B006
    x_tenant_id: Annotated[str | None, Header(alias="X-Tenant-Id")] = None,
) -> LineageList:
    if not (job or dataset or file):
        raise InvalidRequest("give at least one job, dataset or file id", param="job")
    tenant = tenant_header(x_tenant_id) if x_tenant_id else None
    with st.db.session() as s:
        hits = versions_using(
            s, jobs=set(job), datasets=set(dataset), files=set(file), tenant=tenant
        )
        return LineageList(
            data=[
                LineageHit(
                    tenant=h.tenant,
                    version=version_out(h.tenant, h.adapter, h.version),
                    matched=h.matched,
                )
                for h in hits
            ]
        )
