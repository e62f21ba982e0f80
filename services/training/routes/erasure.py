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
    SettleErasures,
    UnsettledErasures,
)

router = APIRouter(prefix="/internal", tags=["erasure"])
TenantPath = Annotated[str, Path(pattern=TENANT_RE.pattern)]


@router.post("/erasure", response_model=ErasureOut)
async def erase(body: ErasureRequest, st: State) -> ErasureOut:
    """Delete the tenant's or the subject's files, datasets and every copy derived from them
    (checkpoints, runner dirs, merged models); jobs still running on them are cancelled
    (their adapter would carry erased data). Erasures a crash cut short finish first and
    are part of the answer."""
    body.check()
    if body.tenant is not None:
        tenant = body.tenant

        def targets() -> set[str]:
            return erasure.tenant_targets(st.db, tenant)
    else:
        assert body.subject is not None
        subject = body.subject

        def targets() -> set[str]:
            return erasure.subject_targets(
                st.db, st.store, email=subject.email, subject_id=subject.id
            )

    done = await st.erasures.run(targets)
    out = erasure_out(done)
    earlier = await anyio.to_thread.run_sync(
        lambda: erasure.unsettled(st.db, besides=done.erasures)
    )
    out.unsettled = UnsettledErasures(**vars(earlier))
    return out


@router.post("/erasure/settle")
async def settle(body: SettleErasures, st: State) -> dict[str, list[str]]:
    """The gateway deleted the adapter versions trained on these erasures' data: they are no
    longer carried as ``unsettled``."""
    settled = await anyio.to_thread.run_sync(erasure.settle, st.db, body.erasures)
    return {"settled": settled}


@router.put("/retention/{tenant}", response_model=RetentionOut)
async def set_retention(tenant: TenantPath, body: RetentionSet, st: State) -> RetentionOut:
    await anyio.to_thread.run_sync(retention.set_retention, st.db, tenant, body.days)
    return RetentionOut(tenant=tenant, days=body.days)


@router.get("/retention/{tenant}", response_model=RetentionOut)
async def get_retention(tenant: TenantPath, st: State) -> RetentionOut:
    days = await anyio.to_thread.run_sync(retention.get_retention, st.db, tenant)
    return RetentionOut(tenant=tenant, days=days)


def erasure_out(done: erasure.Erased) -> ErasureOut:
    def items(pairs: list[tuple[str, str]]) -> list[ErasedItem]:
        return [ErasedItem(id=i, tenant=t) for t, i in pairs]

    return ErasureOut(
        files=items(done.files),
        datasets=items(done.datasets),
        jobs=[ErasedItem(id=j, tenant=t) for j, (t, _) in sorted(done.jobs.items())],
        jobs_cancelled=[j for _, j in done.active_jobs()],
        checkpoints=items(done.checkpoints),
        runner_dirs=items(done.runner_dirs),
        models=items(done.models),
        counts=done.counts(),
        erasures=done.erasures,
    )
