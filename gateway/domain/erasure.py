"""Right to erasure across the fleet: the training service deletes the data, the registry
says which adapter versions were trained on it and deletes them, the gateway audits and
reports.

Order matters: data first (the legal obligation), then lineage, then the versions, each
through the registry's own delete (``adapter.deleted`` reaches every replica, which unloads
it and removes its copy, and every gateway). If the registry cannot answer, the erasure still
stands and the report says what is missing (``lineage_error``, ``deletion_error``) instead of
failing the whole call. The training service keeps each erasure's ids until the gateway
settles it (every version deleted): an erasure whose versions were not all deleted (the
registry failed, the gateway or the training service crashed in between) is carried in the
next erasure's answer (``unsettled``), whose run looks its versions up and deletes them; a
version already gone counts as deleted, so a rerun is always safe.

The subject's e-mail or id never reaches the audit log or logs in clear: the audit keeps
an HMAC of it under the gateway's key-hash secret, so the same subject always gives the
same value (an auditor holding the secret can check a later request against it) while a
reader of the log alone cannot recover or dictionary-test addresses.

Merged models (full/transfer/hybrid results registered as tenant base models) trained on the
erased data lose their weights in the training service and their catalog entry here; a
catalog the registry could not update is reported (``models_error``), not failed.

The gateway's own copies go too: idempotency replays (the stored first answers of uploads
and job creations, kept for a day) that name an erased file, or all of an erased tenant's;
and an erased tenant's answers kept for feedback in the shared database (several gateways).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gateway.domain.admin import Actor
from gateway.storage.tables import IdempotencyRow, PredictionRow
from shared.clients.registry import RegistryClient
from shared.clients.training import TrainingClient
from shared.db import Database
from shared.errors import NotFound, TunefleetError
from shared.offloop import in_session
from shared.schemas.erasure import (
    ErasedItem,
    ErasureReport,
    ErasureRequest,
    RetentionSet,
    TenantRetention,
)

log = logging.getLogger(__name__)
LINEAGE_BATCH = 100  # ids of each kind per lineage query (the registry takes up to 200)


def subject_digest(secret: str, kind: str, value: str) -> str:
    """HMAC-SHA256 of a normalized subject key (e-mail lower-cased) — what the audit keeps."""
    norm = value.strip().lower() if kind == "email" else value.strip()
    return hmac.new(secret.encode(), f"{kind}:{norm}".encode(), hashlib.sha256).hexdigest()


async def versions_trained_on(
    registry: RegistryClient, *, jobs: list[str], datasets: list[str], files: list[str]
) -> list[dict[str, Any]]:
    """Adapter versions whose lineage names any of these ids (all tenants), deduplicated."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, max(len(jobs), len(datasets), len(files)), LINEAGE_BATCH):
        window = slice(start, start + LINEAGE_BATCH)
        hits = await registry.lineage(
            jobs=jobs[window], datasets=datasets[window], files=files[window]
        )
        for hit in hits:
            version = hit.version
            entry = found.setdefault(
                version.ref,
                {
                    "object": "adapter.version.affected",
                    "ref": version.ref,
                    "tenant": hit.tenant,
                    "adapter": version.adapter,
                    "version": version.version,
                    "lineage": version.lineage.model_dump(mode="json"),
                    "matched": [],
                },
            )
            entry["matched"] = sorted({*entry["matched"], *hit.matched})
    return [found[k] for k in sorted(found)]


async def erase(
    training: TrainingClient, registry: RegistryClient, request: ErasureRequest
) -> dict[str, Any]:
    """Erase in training, then look up the affected versions (of this erasure and of the
    unsettled earlier ones) and delete them; returns the report body."""
    done = await training.erase(request)
    earlier = done.unsettled
    ids = {
        "files": [x.id for x in done.files] + earlier.files,
        "datasets": [x.id for x in done.datasets] + earlier.datasets,
        "jobs": [x.id for x in done.jobs] + earlier.jobs,
    }
    report: dict[str, Any] = {
        "object": "erasure.report",
        **done.model_dump(exclude={"object", "unsettled"}),
        "adapter_versions": [],
        "lineage_error": None,
        "deletion_error": None,
    }
    report["models_error"] = await retire_models(registry, done.models)
    if any(ids.values()):
        try:
            report["adapter_versions"] = await versions_trained_on(
                registry, jobs=ids["jobs"], datasets=ids["datasets"], files=ids["files"]
            )
        except TunefleetError as exc:  # the data is gone either way: report, don't fail
            report["adapter_versions"] = None
            report["lineage_error"] = exc.message
            return report  # unsettled: the next erasure looks them up again
        report["deletion_error"] = await delete_versions(registry, report["adapter_versions"])
    if report["deletion_error"] is None:
        try:
            await training.settle_erasures(done.erasures + earlier.erasures)
        except TunefleetError as exc:  # carried again by the next erasure: nothing lost
            log.warning("could not settle erasures", extra={"code": exc.code})
    return report


async def delete_versions(registry: RegistryClient, versions: list[dict[str, Any]]) -> str | None:
    """Delete each version (marking it ``deleted``, with the aliases that went with it)
    through the registry's delete; one already gone counts. The failures' messages, if any."""
    errors = []
    for v in versions:
        try:
            v["aliases_deleted"] = await registry.delete_version(
                v["tenant"], v["adapter"], v["version"]
            )
        except NotFound:
            pass  # deleted already (a rerun, an operator)
        except TunefleetError as exc:
            errors.append(f"{v['ref']}: {exc.message}")
            continue
        v["deleted"] = True
    return "; ".join(errors) or None


async def retire_models(registry: RegistryClient, models: list[ErasedItem]) -> str | None:
    """Remove merged models whose weights the training service erased from the registry's
    catalog (an entry naming deleted weights cannot serve); the failures' messages, if any.
    A model already gone (a rerun) is fine."""
    errors = []
    for m in models:
        try:
            await registry.delete_base_model(m.tenant, m.id)
        except NotFound:
            continue
        except TunefleetError as exc:
            errors.append(f"{m.id}: {exc.message}")
    return "; ".join(errors) or None


def forget_replays(s: Session, *, tenant: str | None, file_ids: list[str]) -> int:
    """Drop stored idempotent answers that describe erased data; returns how many.

    A tenant's erasure drops all of the tenant's; a subject's, those whose body names an
    erased file (the upload's file object, a job created on it). A retry with such a key
    then runs again instead of replaying the erased file's metadata.
    """
    if tenant is not None:
        mine = IdempotencyRow.tenant == tenant
        count = s.scalar(select(func.count()).select_from(IdempotencyRow).where(mine)) or 0
        s.execute(delete(IdempotencyRow).where(mine))
        s.execute(delete(PredictionRow).where(PredictionRow.tenant == tenant))
        return count
    needles = [f.encode() for f in file_ids]
    if not needles:
        return 0
    stale = [
        (row.tenant, row.key)
        for row in s.scalars(select(IdempotencyRow))  # a day's worth at most (TTL)
        if any(n in (row.body or b"") for n in needles)
    ]
    for t, k in stale:
        s.execute(delete(IdempotencyRow).where(IdempotencyRow.tenant == t, IdempotencyRow.key == k))
    return len(stale)


def subject_details(secret: str, body: ErasureRequest) -> dict[str, Any]:
    """What the audit entry says about whom was erased: the scope and the subject's HMACs."""
    if body.subject is None:
        return {"scope": "tenant"}
    details: dict[str, Any] = {"scope": "subject"}
    if body.subject.email:
        details["subject_email_hmac"] = subject_digest(secret, "email", body.subject.email)
    if body.subject.id:
        details["subject_id_hmac"] = subject_digest(secret, "id", body.subject.id)
    return details


async def _audit(
    db: Database,
    actor: Actor,
    tenant: str | None,
    action: str,
    outcome: str,
    details: dict[str, Any],
    target: str | None = None,
) -> int:
    """Append the call's audit entry (off the loop); returns its id."""
    return await in_session(
        db,
        lambda s: (
            actor.record(
                s,
                tenant=tenant,
                action=action,
                target=target or tenant or "",
                outcome=outcome,
                details=details,
            ).id
        ),
        write=True,
    )


async def erase_audited(
    db: Database,
    secret: str,
    training: TrainingClient,
    registry: RegistryClient,
    body: ErasureRequest,
    actor: Actor,
) -> ErasureReport:
    """Erase (``erase``), forget the gateway's replays of the erased data, and audit the
    call whatever its outcome (a failure is audited with its status, then re-raised)."""
    details = subject_details(secret, body)
    target = f"tenant:{body.tenant}" if body.tenant else "subject"
    try:
        report = await erase(training, registry, body)
    except TunefleetError as exc:
        await _audit(
            db, actor, body.tenant, "data.erasure", str(exc.status), details, target=target
        )
        raise
    file_ids = [f["id"] for f in report["files"]]
    report["replays_forgotten"] = await in_session(
        db, lambda s: forget_replays(s, tenant=body.tenant, file_ids=file_ids), write=True
    )
    details |= {
        "files": len(report["files"]),
        "datasets": len(report["datasets"]),
        "jobs": len(report["jobs"]),
        "adapter_versions": (
            None
            if report["adapter_versions"] is None
            else [v["ref"] for v in report["adapter_versions"]]
        ),
        "adapter_versions_deleted": [
            v["ref"] for v in report["adapter_versions"] or [] if v.get("deleted")
        ],
        "derived": {k: len(report[k]) for k in ("checkpoints", "runner_dirs", "models")},
        "erasures": report["erasures"],
    }
    errors = ("lineage_error", "models_error", "deletion_error")
    partial = any(report[k] is not None for k in errors)
    outcome = "partial" if partial else "ok"
    report["audit_id"] = await _audit(
        db, actor, body.tenant, "data.erasure", outcome, details, target=target
    )
    report |= {"scope": details["scope"], "tenant": body.tenant}
    report["subject_hmac"] = details.get("subject_email_hmac") or details.get("subject_id_hmac")
    versions = report["adapter_versions"]
    report["counts"] |= {
        "adapter_versions": len(versions or []),
        "adapter_versions_deleted": len(details["adapter_versions_deleted"]),
        "replays_forgotten": report["replays_forgotten"],
    }
    return ErasureReport.model_validate(report)


async def set_retention_audited(
    db: Database, training: TrainingClient, tenant: str, body: RetentionSet, actor: Actor
) -> TenantRetention:
    """Set the tenant's retention in the training service; audited whatever the outcome."""
    details: dict[str, Any] = {"days": body.days}
    try:
        out = await training.set_retention(tenant, body.days)
    except TunefleetError as exc:
        await _audit(db, actor, tenant, "tenant.retention", str(exc.status), details)
        raise
    await _audit(db, actor, tenant, "tenant.retention", "ok", details)
    return TenantRetention(tenant=tenant, days=out.days)
