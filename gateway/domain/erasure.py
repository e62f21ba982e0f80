"""Right to erasure across the fleet: the training service deletes the data, the registry
says which adapter versions were trained on it, the gateway audits and reports.

Order matters: data first (the legal obligation), then lineage. If the registry cannot
answer, the erasure still stands and the report says the version list is missing
(``lineage_error``) instead of failing the whole call; running it again is safe (nothing
left to delete) but then finds no ids, so the first report is the one to keep.

The subject's e-mail or id never reaches the audit log or logs in clear: the audit keeps
an HMAC of it under the gateway's key-hash secret, so the same subject always gives the
same value (an auditor holding the secret can check a later request against it) while a
reader of the log alone cannot recover or dictionary-test addresses.

The gateway's own copies go too: idempotency replays (the stored first answers of uploads
and job creations, kept for a day) that name an erased file, or all of an erased tenant's.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gateway.storage.tables import IdempotencyRow
from shared.errors import ServiceUnavailable, TunefleetError, error_from_envelope

LINEAGE_BATCH = 100  # ids per lineage query (the registry takes up to 200 per parameter)


@dataclass(frozen=True)
class Upstream:
    """How the gateway reaches the internal services for these calls."""

    http: httpx.AsyncClient
    training_url: str
    registry_url: str
    token: str
    request_id: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.request_id:
            headers["X-Request-Id"] = self.request_id
        return headers

    async def call(self, service: str, method: str, url: str, **kw: Any) -> Any:
        """One internal call; the callee's error envelope comes back as the same typed error."""
        try:
            resp = await self.http.request(method, url, headers=self.headers(), **kw)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"{service} unreachable: {type(exc).__name__}", code=f"{service}_unavailable"
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise error_from_envelope(resp.status_code, body)
        return resp.json()


def subject_digest(secret: str, kind: str, value: str) -> str:
    """HMAC-SHA256 of a normalized subject key (e-mail lower-cased) — what the audit keeps."""
    norm = value.strip().lower() if kind == "email" else value.strip()
    return hmac.new(secret.encode(), f"{kind}:{norm}".encode(), hashlib.sha256).hexdigest()


async def versions_trained_on(
    up: Upstream, *, jobs: list[str], datasets: list[str], files: list[str]
) -> list[dict[str, Any]]:
    """Adapter versions whose lineage names any of these ids (all tenants), deduplicated."""
    found: dict[str, dict[str, Any]] = {}
    pairs = [("job", j) for j in jobs] + [("dataset", d) for d in datasets]
    pairs += [("file", f) for f in files]
    for start in range(0, len(pairs), LINEAGE_BATCH):
        params = pairs[start : start + LINEAGE_BATCH]
        body = await up.call("registry", "GET", f"{up.registry_url}/v1/lineage", params=params)
        for hit in body["data"]:
            version = hit["version"]
            ref = version["ref"]
            entry = found.setdefault(
                ref,
                {
                    "object": "adapter.version.affected",
                    "ref": ref,
                    "tenant": hit["tenant"],
                    "adapter": version["adapter"],
                    "version": version["version"],
                    "lineage": version["lineage"],
                    "matched": [],
                },
            )
            entry["matched"] = sorted({*entry["matched"], *hit["matched"]})
    return [found[k] for k in sorted(found)]


async def erase(up: Upstream, request: dict[str, Any]) -> dict[str, Any]:
    """Erase in training, then look up the affected versions; returns the report body."""
    done = await up.call("training", "POST", f"{up.training_url}/internal/erasure", json=request)
    ids = {k: [x["id"] for x in done[k]] for k in ("files", "datasets", "jobs")}
    report: dict[str, Any] = {
        "object": "erasure.report",
        "files": done["files"],
        "datasets": done["datasets"],
        "jobs": done["jobs"],
        "jobs_cancelled": done["jobs_cancelled"],
        "adapter_versions": [],
        "lineage_error": None,
    }
    if any(ids.values()):
        try:
            report["adapter_versions"] = await versions_trained_on(
                up, jobs=ids["jobs"], datasets=ids["datasets"], files=ids["files"]
            )
        except TunefleetError as exc:  # the data is gone either way: report, don't fail
            report["adapter_versions"] = None
            report["lineage_error"] = exc.message
    return report


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
