"""``/admin/erasure`` (GDPR right to erasure) and ``/admin/retention/{tenant}`` (role admin;
sre reads retention). A tenant's admin erases and sets retention for their own tenant; a
data subject is erased in every tenant, so that is a platform operation. Every call is
audited, failures included; a subject's e-mail or id is kept only as an HMAC
(``gateway.domain.erasure.subject_digest``)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Request

from gateway.deps import Caller, GatewayState, State
from gateway.domain import audit
from gateway.domain.erasure import erase, forget_replays, subject_digest
from gateway.domain.keys import Principal, get_tenant
from shared.app import request_id_of
from shared.auth import TENANT_RE
from shared.errors import TunefleetError
from shared.schemas.erasure import ErasureRequest, RetentionSet

router = APIRouter(prefix="/admin", tags=["admin"])
TenantPath = Annotated[str, Path(pattern=TENANT_RE.pattern)]


async def _audit(
    st: GatewayState,
    request: Request,
    who: Principal,
    *,
    tenant: str | None,
    action: str,
    target: str,
    outcome: str,
    details: dict[str, Any],
) -> int:
    def write() -> int:
        with st.db.session(write=True) as s:
            row = audit.record(
                s,
                tenant=tenant,
                actor=who.key_id,
                action=action,
                target=target,
                outcome=outcome,
                request_id=request_id_of(request),
                details=details,
            )
            return row.id

    return await anyio.to_thread.run_sync(write)


def _subject_details(st: GatewayState, body: ErasureRequest) -> dict[str, Any]:
    if body.subject is None:
        return {"scope": "tenant"}
    details: dict[str, Any] = {"scope": "subject"}
    if body.subject.email:
        details["subject_email_hmac"] = subject_digest(st.key_secret, "email", body.subject.email)
    if body.subject.id:
        details["subject_id_hmac"] = subject_digest(st.key_secret, "id", body.subject.id)
    return details


@router.post("/erasure")
async def erasure(body: ErasureRequest, request: Request, st: State, who: Caller) -> dict[str, Any]:
    """Delete a tenant's or a data subject's files and datasets; report the adapter versions
    trained on them (to retrain or retire). Audited whatever the outcome."""
    who.require("admin_write")
    body.check()
    if body.tenant is None:
        who.require_platform("admin_write", "erasing a data subject in every tenant")
    else:
        who.require_tenant("admin_write", body.tenant)
        with st.db.session() as s:
            get_tenant(s, body.tenant)  # 404 names "tenant"
    details = _subject_details(st, body)
    target = f"tenant:{body.tenant}" if body.tenant else "subject"
    try:
        report = await erase(st.training, st.registry, body)
    except TunefleetError as exc:
        await _audit(
            st,
            request,
            who,
            tenant=body.tenant,
            action="data.erasure",
            target=target,
            outcome=str(exc.status),
            details=details,
        )
        raise
    file_ids = [f["id"] for f in report["files"]]

    def forget() -> int:
        with st.db.session(write=True) as s:
            return forget_replays(s, tenant=body.tenant, file_ids=file_ids)

    report["replays_forgotten"] = await anyio.to_thread.run_sync(forget)
    details |= {
        "files": len(report["files"]),
        "datasets": len(report["datasets"]),
        "jobs": len(report["jobs"]),
        "adapter_versions": (
            None
            if report["adapter_versions"] is None
            else [v["ref"] for v in report["adapter_versions"]]
        ),
    }
    outcome = "ok" if report["lineage_error"] is None else "partial"
    report["audit_id"] = await _audit(
        st,
        request,
        who,
        tenant=body.tenant,
        action="data.erasure",
        target=target,
        outcome=outcome,
        details=details,
    )
    report |= {"scope": details["scope"], "tenant": body.tenant}
    report["subject_hmac"] = details.get("subject_email_hmac") or details.get("subject_id_hmac")
    return report


@router.put("/retention/{tenant_id}")
async def set_retention(
    tenant_id: TenantPath, body: RetentionSet, request: Request, st: State, who: Caller
) -> dict[str, Any]:
    """How long the tenant's files and prepared datasets are kept (``null``: forever); the
    training service purges older ones on its own schedule."""
    who.require_tenant("admin_write", tenant_id)
    with st.db.session() as s:
        get_tenant(s, tenant_id)
    try:
        out = await st.training.set_retention(tenant_id, body.days)
    except TunefleetError as exc:
        await _audit(
            st,
            request,
            who,
            tenant=tenant_id,
            action="tenant.retention",
            target=tenant_id,
            outcome=str(exc.status),
            details={"days": body.days},
        )
        raise
    await _audit(
        st,
        request,
        who,
        tenant=tenant_id,
        action="tenant.retention",
        target=tenant_id,
        outcome="ok",
        details={"days": body.days},
    )
    return {"object": "tenant.retention", "tenant": tenant_id, "days": out.days}


@router.get("/retention/{tenant_id}")
async def get_retention(tenant_id: TenantPath, st: State, who: Caller) -> dict[str, Any]:
    who.require_tenant("admin_read", tenant_id)
    with st.db.session() as s:
        get_tenant(s, tenant_id)
    out = await st.training.get_retention(tenant_id)
    return {"object": "tenant.retention", "tenant": tenant_id, "days": out.days}
