"""Typed async client for the adapter registry (used by gateway, training, inference)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from shared.clients.base import ServiceClient
from shared.countlimit import MAX_ADAPTERS_HEADER
from shared.errors import InternalError
from shared.schemas.common import ListResponse
from shared.schemas.registry import (
    AdapterOut,
    AdapterVersionOut,
    AliasMoveOut,
    AliasOut,
    BaseModelMetadata,
    BaseModelOut,
    EventPage,
    LineageHit,
    LineageList,
    Resolution,
    VersionMetadata,
    WebhookOut,
)

DEFAULT_CALL_S = 10.0  # a feed call's time beyond its long-poll wait
MODEL_UPLOAD_TIMEOUT = httpx.Timeout(900.0, connect=5.0)


class RegistryClient(ServiceClient):
    service = "registry"

    async def resolve(self, tenant: str, model: str, *, timeout: float | None = None) -> Resolution:
        """What ``model`` names for ``tenant`` now (``timeout``: this call's, if not the
        client's)."""
        kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        data = await self.json("GET", "/v1/resolve", tenant=tenant, params={"model": model}, **kw)
        return Resolution.model_validate(data)

    async def events(
        self, after: int | None, *, wait_s: float = 0.0, limit: int = 500
    ) -> EventPage:
        """The change feed after ``after`` (None: just the head), waiting up to ``wait_s``
        for an event when there is none yet (a long poll: this call's timeout covers it)."""
        params: dict[str, Any] = {"wait": wait_s, "limit": limit}
        if after is not None:
            params["after"] = after
        data = await self.json(
            "GET", "/v1/internal/events", params=params, timeout=wait_s + DEFAULT_CALL_S
        )
        return EventPage.model_validate(data)

    async def list_base_models(self, tenant: str) -> list[BaseModelOut]:
        data = await self.json("GET", "/v1/base-models", tenant=tenant)
        return ListResponse[BaseModelOut].model_validate(data).data

    async def delete_base_model(self, tenant: str, model_id: str) -> None:
        """Remove the tenant's own base model (a full fine-tune) from the catalog."""
        await self.request("DELETE", f"/v1/base-models/{model_id}", tenant=tenant)

    async def list_adapters(
        self, tenant: str, *, after: str | None = None, limit: int = 100
    ) -> ListResponse[AdapterOut]:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        data = await self.json("GET", "/v1/adapters", tenant=tenant, params=params)
        return ListResponse[AdapterOut].model_validate(data)

    async def get_adapter(self, tenant: str, name: str) -> AdapterOut:
        return AdapterOut.model_validate(
            await self.json("GET", f"/v1/adapters/{name}", tenant=tenant)
        )

    async def push_version(
        self,
        tenant: str,
        name: str,
        archive: Path,
        metadata: VersionMetadata,
        *,
        actor: str | None = None,
        max_adapters: int | None = None,
    ) -> AdapterVersionOut:
        """``max_adapters``: the tenant's limit, applied when this version creates the adapter
        (429 ``adapter_quota_exceeded`` at it)."""
        headers = {"X-Tunefleet-Actor": actor} if actor else {}
        if max_adapters is not None:
            headers[MAX_ADAPTERS_HEADER] = str(max_adapters)
        with archive.open("rb") as fh:
            data = await self.json(
                "POST",
                f"/v1/adapters/{name}/versions",
                tenant=tenant,
                headers=headers,
                files={"file": (archive.name, fh, "application/gzip")},
                data={"metadata": metadata.model_dump_json()},
            )
        return AdapterVersionOut.model_validate(data)

    async def list_versions(self, tenant: str, name: str) -> list[AdapterVersionOut]:
        data = await self.json(
            "GET", f"/v1/adapters/{name}/versions", tenant=tenant, params={"limit": 100}
        )
        return ListResponse[AdapterVersionOut].model_validate(data).data

    async def get_version(self, tenant: str, name: str, version: int) -> AdapterVersionOut:
        return AdapterVersionOut.model_validate(
            await self.json("GET", f"/v1/adapters/{name}/versions/{version}", tenant=tenant)
        )

    async def download_archive(
        self, tenant: str, name: str, version: int, dest: Path, *, sha256: str | None = None
    ) -> Path:
        """Stream an archive to ``dest`` (atomic rename), verifying its sha256 on the way."""
        path = f"/v1/adapters/{name}/versions/{version}/archive"
        return await self._download(path, tenant, dest, sha256, f"archive of {name}@v{version}")

    async def push_base_model(
        self, tenant: str, archive: Path, metadata: BaseModelMetadata
    ) -> BaseModelOut:
        """Upload a model archive (``shared.models.artifact.pack_model_dir``) as the tenant's
        own base model; the file is streamed, never read into memory."""
        with archive.open("rb") as fh:
            data = await self.json(
                "POST",
                "/v1/base-models",
                tenant=tenant,
                files={"file": (archive.name, fh, "application/gzip")},
                data={"metadata": metadata.model_dump_json(exclude_none=True)},
                timeout=MODEL_UPLOAD_TIMEOUT,  # the registry unpacks and hashes it first
            )
        return BaseModelOut.model_validate(data)

    async def get_base_model(self, tenant: str, model_id: str) -> BaseModelOut:
        data = await self.json("GET", f"/v1/base-models/{model_id}", tenant=tenant)
        return BaseModelOut.model_validate(data)

    async def download_base_model(
        self, tenant: str, model_id: str, dest: Path, *, sha256: str | None = None
    ) -> Path:
        """Stream an uploaded model's archive to ``dest``, verifying its sha256."""
        path = f"/v1/base-models/{model_id}/archive"
        return await self._download(path, tenant, dest, sha256, f"model archive of {model_id}")

    async def _download(
        self, path: str, tenant: str, dest: Path, sha256: str | None, what: str
    ) -> Path:
        tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
        h = hashlib.sha256()
        try:
            async with self._http.stream("GET", path, headers=self._headers(tenant)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise self._error(resp)
                expected = sha256 or resp.headers.get("X-Tunefleet-Sha256")
                with tmp.open("wb") as out:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
            if expected and h.hexdigest() != expected:
                raise InternalError(f"{what} failed its sha256 check")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)
        return dest

    async def set_alias(
        self, tenant: str, name: str, alias: str, version: int, *, actor: str | None = None
    ) -> AliasOut:
        headers = {"X-Tunefleet-Actor": actor} if actor else None
        data = await self.json(
            "PUT",
            f"/v1/adapters/{name}/aliases/{alias}",
            tenant=tenant,
            headers=headers,
            json={"version": version},
        )
        return AliasOut.model_validate(data)

    async def delete_version(self, tenant: str, name: str, version: int) -> list[str]:
        """Delete one version of the tenant's adapter; the aliases that pointed at it (deleted
        with it). ``NotFound`` if it is gone already."""
        body = await self.json("DELETE", f"/v1/adapters/{name}/versions/{version}", tenant=tenant)
        return [str(a) for a in body.get("aliases_deleted", [])]

    async def delete_alias(self, tenant: str, name: str, alias: str) -> None:
        await self.request("DELETE", f"/v1/adapters/{name}/aliases/{alias}", tenant=tenant)

    async def alias_moves(self, tenant: str, name: str) -> list[AliasMoveOut]:
        data = await self.json("GET", f"/v1/adapters/{name}/alias-moves", tenant=tenant)
        return ListResponse[AliasMoveOut].model_validate(data).data

    async def create_webhook(self, tenant: str, url: str, events: list[str]) -> WebhookOut:
        data = await self.json(
            "POST",
            "/v1/webhooks",
            tenant=tenant,
            content=json.dumps({"url": url, "events": events}),
            headers={"Content-Type": "application/json"},
        )
        return WebhookOut.model_validate(data)

    async def lineage(
        self,
        *,
        jobs: Sequence[str] = (),
        datasets: Sequence[str] = (),
        files: Sequence[str] = (),
        tenant: str | None = None,
    ) -> list[LineageHit]:
        """Versions trained on any of these ids, in every tenant unless ``tenant`` narrows it
        (at most 200 ids per kind per call)."""
        params = [("job", j) for j in jobs] + [("dataset", d) for d in datasets]
        params += [("file", f) for f in files]
        data = await self.json("GET", "/v1/lineage", tenant=tenant, params=params)
        return LineageList.model_validate(data).data
