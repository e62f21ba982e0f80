"""Internal erasure and retention calls (internal token; only the gateway's admin routes call
these). ``POST /internal/erasure`` spans tenants for a data subject, so it takes no
``X-Tenant-Id``; the tenant, when erasing a tenant, is in the body."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path

from services.training.deps import State
from services.training.domain import erasure, retention
from shared.auth import TENANT_RE
from shared.schemas.erasure import (
    ErasedItem,
    ErasureOut,
    ErasureRequest,
    RetentionOut,
    RetentionSet,
)

router = APIRouter(prefix="/internal", tags=["erasure"])
TenantPath = Annotated[str, Path(pattern=TENANT_RE.pattern)]


@router.post("/erasure", response_model=ErasureOut)
async def erase(body: ErasureRequest, st: State) -> ErasureOut:
    """Delete the tenant's or the subject's files and datasets; jobs still running on them
    are cancelled (their adapter would carry erased data)."""
    body.check()
    if body.tenant is not None:
        tenant = body.tenant
        done = await anyio.to_thread.run_sync(erasure.erase_tenant, st.db, st.store, tenant)
    else:
        assert body.subject is not None
        subject = body.subject

        def run() -> erasure.Erased:
            return erasure.erase_subject(
                st.db, st.store, email=subject.email, subject_id=subject.id
            )

        done = await anyio.to_thread.run_sync(run)
    cancelled = []
    for tenant, job_id in done.active_jobs():
        await st.lifecycle.cancel(tenant, job_id)
        cancelled.append(job_id)
    return ErasureOut(
        files=[ErasedItem(id=f, tenant=t) for t, f in done.files],
        datasets=[ErasedItem(id=d, tenant=t) for t, d in done.datasets],
        jobs=[ErasedItem(id=j, tenant=t) for j, (t, _) in sorted(done.jobs.items())],
        jobs_cancelled=cancelled,
    )


@router.put("/retention/{tenant}", response_model=RetentionOut)
async def set_retention(tenant: TenantPath, body: RetentionSet, st: State) -> RetentionOut:
    await anyio.to_thread.run_sync(retention.set_retention, st.db, tenant, body.days)
    return RetentionOut(tenant=tenant, days=body.days)


@router.get("/retention/{tenant}", response_model=RetentionOut)
async def get_retention(tenant: TenantPath, st: State) -> RetentionOut:
    days = await anyio.to_thread.run_sync(retention.get_retention, st.db, tenant)
    return RetentionOut(tenant=tenant, days=days)
