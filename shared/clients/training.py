"""Typed async client for the training service (used by the gateway and the CLI)."""

from __future__ import annotations

import json
from typing import Any

from shared.clients.base import ServiceClient
from shared.schemas.common import ListResponse
from shared.schemas.erasure import ErasureOut, ErasureRequest, RetentionOut
from shared.schemas.training import (
    CheckpointOut,
    EventOut,
    FileDeleted,
    FileOut,
    JobCreate,
    JobOut,
)


def _page(after: str | None, limit: int) -> dict[str, Any]:
    return {"limit": limit, **({"after": after} if after else {})}


class TrainingClient(ServiceClient):
    service = "training"

    async def upload_file(
        self,
        tenant: str,
        filename: str,
        data: bytes,
        *,
        mapping: dict[str, str] | None = None,
        purpose: str = "fine-tune",
    ) -> FileOut:
        form = {"purpose": purpose}
        if mapping is not None:
            form["mapping"] = json.dumps(mapping)
        body = await self.json(
            "POST",
            "/v1/files",
            tenant=tenant,
            files={"file": (filename, data, "application/octet-stream")},
            data=form,
        )
        return FileOut.model_validate(body)

    async def list_files(
        self, tenant: str, *, after: str | None = None, limit: int = 20
    ) -> ListResponse[FileOut]:
        body = await self.json("GET", "/v1/files", tenant=tenant, params=_page(after, limit))
        return ListResponse[FileOut].model_validate(body)

    async def get_file(self, tenant: str, file_id: str) -> FileOut:
        return FileOut.model_validate(await self.json("GET", f"/v1/files/{file_id}", tenant=tenant))

    async def file_content(self, tenant: str, file_id: str) -> bytes:
        return (await self.request("GET", f"/v1/files/{file_id}/content", tenant=tenant)).content

    async def delete_file(self, tenant: str, file_id: str) -> FileDeleted:
        body = await self.json("DELETE", f"/v1/files/{file_id}", tenant=tenant)
        return FileDeleted.model_validate(body)

    async def create_job(self, tenant: str, job: JobCreate | dict[str, Any]) -> JobOut:
        payload = job if isinstance(job, dict) else job.model_dump(mode="json", exclude_none=True)
        body = await self.json("POST", "/v1/fine_tuning/jobs", tenant=tenant, json=payload)
        return JobOut.model_validate(body)

    async def list_jobs(
        self, tenant: str, *, after: str | None = None, limit: int = 20
    ) -> ListResponse[JobOut]:
        body = await self.json(
            "GET", "/v1/fine_tuning/jobs", tenant=tenant, params=_page(after, limit)
        )
        return ListResponse[JobOut].model_validate(body)

    async def get_job(self, tenant: str, job_id: str) -> JobOut:
        body = await self.json("GET", f"/v1/fine_tuning/jobs/{job_id}", tenant=tenant)
        return JobOut.model_validate(body)

    async def cancel_job(self, tenant: str, job_id: str) -> JobOut:
        # cancel is idempotent, so a retry after a lost answer is safe
        body = await self.json(
            "POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", tenant=tenant, idempotent=True
        )
        return JobOut.model_validate(body)

    async def list_events(
        self, tenant: str, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> ListResponse[EventOut]:
        body = await self.json(
            "GET",
            f"/v1/fine_tuning/jobs/{job_id}/events",
            tenant=tenant,
            params=_page(after, limit),
        )
        return ListResponse[EventOut].model_validate(body)

    async def list_checkpoints(
        self, tenant: str, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> ListResponse[CheckpointOut]:
        body = await self.json(
            "GET",
            f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
            tenant=tenant,
            params=_page(after, limit),
        )
        return ListResponse[CheckpointOut].model_validate(body)

    # ---- internal (gateway admin routes): erasure and retention span the request's tenant
    async def erase(self, request: ErasureRequest) -> ErasureOut:
        """Delete a tenant's or a data subject's files and datasets (not retried: a second
        run finds nothing, so the first answer is the report to keep)."""
        body = await self.json(
            "POST", "/internal/erasure", json=request.model_dump(exclude_none=True)
        )
        return ErasureOut.model_validate(body)

    async def settle_erasures(self, erasure_ids: list[str]) -> list[str]:
        """Tell training the adapter versions of these erasures are deleted; those settled."""
        body = await self.json(
            "POST", "/internal/erasure/settle", json={"erasures": erasure_ids}, idempotent=True
        )
        return [str(x) for x in body.get("settled", [])]

    async def get_retention(self, tenant: str) -> RetentionOut:
        return RetentionOut.model_validate(await self.json("GET", f"/internal/retention/{tenant}"))

    async def set_retention(self, tenant: str, days: int | None) -> RetentionOut:
        body = await self.json("PUT", f"/internal/retention/{tenant}", json={"days": days})
        return RetentionOut.model_validate(body)
