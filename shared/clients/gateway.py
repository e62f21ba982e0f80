"""Typed async client for the public gateway API (API.md), authenticated with an API key.

Used by the ``tunefleet`` CLI and the demo; it speaks only the public contract, so anything
it can do a customer can do with curl. Errors come back as the fleet's typed errors
(``shared.errors``), rebuilt from the envelope by :class:`ServiceClient`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from shared.clients.base import DEFAULT_TIMEOUT, ServiceClient
from shared.errors import InternalError, InvalidRequest, NotFound
from shared.schemas.admin import (
    AuditEntry,
    KeyCreated,
    KeyOut,
    KeyRevoked,
    TenantOut,
    UsageOut,
)
from shared.schemas.common import ListResponse
from shared.schemas.integrations import IntegrationOut, InvokeOut, TestReport

JSON = dict[str, Any]
DEFAULT_URL = "http://127.0.0.1:8000"
ListPage = ListResponse[JSON]


class GatewayClient(ServiceClient):
    """One method per public call. ``api_key`` is a ``tf-…`` key; the tenant comes from it."""

    service = "gateway"

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str = "",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
    ) -> None:
        super().__init__(base_url, api_key, transport=transport, timeout=timeout, retries=retries)

    async def __aenter__(self) -> GatewayClient:
        return self

    @classmethod
    def from_env(cls, url: str | None = None, key: str | None = None) -> GatewayClient:
        """Explicit values first, then ``TUNEFLEET_URL`` / ``TUNEFLEET_API_KEY``."""
        return cls(
            url or os.environ.get("TUNEFLEET_URL") or DEFAULT_URL,
            key or os.environ.get("TUNEFLEET_API_KEY") or "",
        )

    async def _object(self, method: str, path: str, **kw: Any) -> JSON:
        """One call whose answer is a JSON object (every public call but file content)."""
        data = await self.json(method, path, **kw)
        if not isinstance(data, dict):
            raise InternalError(
                f"gateway answered {method} {path} with {type(data).__name__}, not an object",
                code="unexpected_response",
            )
        return data

    async def _page(self, path: str, **kw: Any) -> ListPage:
        """One page of a list (API.md: ``{"object": "list", "data": [...], "has_more"}``)."""
        return ListPage.model_validate(await self._object("GET", path, **kw))

    async def _data(self, path: str, **kw: Any) -> list[JSON]:
        return (await self._page(path, **kw)).data

    async def _list(self, path: str, **params: Any) -> list[JSON]:
        """Every page of a cursor-paginated list (``after``/``limit``)."""
        out: list[JSON] = []
        query = {k: v for k, v in params.items() if v is not None}
        while True:
            page = await self._page(path, params=query)
            out.extend(page.data)
            if not page.has_more or not page.data or "id" not in page.data[-1]:
                return out
            query["after"] = page.data[-1]["id"]

    # ------------------------------------------------------------------ files
    async def upload_file(
        self, path: Path, *, purpose: str = "fine-tune", mapping: dict[str, str] | None = None
    ) -> JSON:
        form: dict[str, str] = {"purpose": purpose}
        if mapping:
            form["mapping"] = json.dumps(mapping)
        with path.open("rb") as fh:
            return await self._object(
                "POST", "/v1/files", files={"file": (path.name, fh)}, data=form
            )

    async def list_files(self) -> list[JSON]:
        return await self._list("/v1/files")

    async def get_file(self, file_id: str) -> JSON:
        return await self._object("GET", f"/v1/files/{file_id}")

    async def delete_file(self, file_id: str) -> JSON:
        return await self._object("DELETE", f"/v1/files/{file_id}")

    # ------------------------------------------------------------------ fine-tuning
    async def create_job(self, body: JSON, *, idempotency_key: str | None = None) -> JSON:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._object("POST", "/v1/fine_tuning/jobs", json=body, headers=headers)

    async def list_jobs(self, *, limit: int = 20) -> list[JSON]:
        return await self._data("/v1/fine_tuning/jobs", params={"limit": limit})

    async def get_job(self, job_id: str) -> JSON:
        return await self._object("GET", f"/v1/fine_tuning/jobs/{job_id}")

    async def cancel_job(self, job_id: str) -> JSON:
        return await self._object("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", idempotent=True)

    async def job_events(self, job_id: str, *, limit: int = 100) -> list[JSON]:
        """Events newest first, as OpenAI returns them."""
        return await self._data(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": limit})

    async def job_checkpoints(self, job_id: str) -> list[JSON]:
        return await self._data(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")

    # ------------------------------------------------------------------ registry
    async def base_models(self) -> list[JSON]:
        return await self._list("/v1/base-models")

    async def list_adapters(self) -> list[JSON]:
        return await self._list("/v1/adapters", limit=100)

    async def get_adapter(self, name: str) -> JSON:
        return await self._object("GET", f"/v1/adapters/{name}")

    async def list_versions(self, name: str) -> list[JSON]:
        return await self._data(f"/v1/adapters/{name}/versions", params={"limit": 100})

    async def set_alias(self, name: str, alias: str, version: int) -> JSON:
        return await self._object(
            "PUT", f"/v1/adapters/{name}/aliases/{alias}", json={"version": version}
        )

    async def alias_moves(self, name: str) -> list[JSON]:
        return await self._data(f"/v1/adapters/{name}/alias-moves", params={"limit": 100})

    async def rollback(self, name: str, alias: str) -> JSON:
        """Point ``alias`` back at the version it held before its last move."""
        moves = [m for m in await self.alias_moves(name) if m.get("alias") == alias]
        if not moves:
            raise NotFound(f"alias {alias!r} of {name!r} has never moved", param="alias")
        last = max(moves, key=lambda m: int(m["id"]))
        previous = last.get("from_version")
        if previous is None:
            raise InvalidRequest(
                f"alias {alias!r} of {name!r} had no version before v{last.get('to_version')}",
                param="alias",
                code="nothing_to_roll_back",
            )
        return await self.set_alias(name, alias, int(previous))

    # ------------------------------------------------------------------ inference
    async def models(self) -> list[JSON]:
        return await self._data("/v1/models")

    async def chat(self, model: str, messages: list[JSON], **options: Any) -> JSON:
        body = {"model": model, "messages": messages, **options}
        return await self._object("POST", "/v1/chat/completions", json=body)

    async def complete(self, model: str, prompt: str | list[str], **options: Any) -> JSON:
        body = {"model": model, "prompt": prompt, **options}
        return await self._object("POST", "/v1/completions", json=body)

    # ------------------------------------------------------------------ integrations
    async def create_integration(self, spec: JSON) -> IntegrationOut:
        return IntegrationOut.model_validate(
            await self._object("POST", "/v1/integrations", json=spec)
        )

    async def list_integrations(self) -> list[IntegrationOut]:
        return [IntegrationOut.model_validate(x) for x in await self._data("/v1/integrations")]

    async def test_integration(self, name: str, samples: list[JSON]) -> TestReport:
        data = await self._object(
            "POST", f"/v1/integrations/{name}/test", json={"samples": samples}, idempotent=True
        )
        return TestReport.model_validate(data)

    async def invoke_integration(self, name: str, records: list[JSON] | JSON) -> InvokeOut:
        body = {"records": records} if isinstance(records, list) else {"record": records}
        data = await self._object("POST", f"/v1/integrations/{name}/invoke", json=body)
        return InvokeOut.model_validate(data)

    # ------------------------------------------------------------------ admin
    async def list_tenants(self) -> list[TenantOut]:
        return [TenantOut.model_validate(x) for x in await self._data("/admin/tenants")]

    async def create_tenant(self, tenant_id: str, name: str = "") -> TenantOut:
        data = await self._object("POST", "/admin/tenants", json={"id": tenant_id, "name": name})
        return TenantOut.model_validate(data)

    async def list_keys(self, tenant: str | None = None) -> list[KeyOut]:
        params = {"tenant": tenant} if tenant else {}
        return [KeyOut.model_validate(x) for x in await self._data("/admin/keys", params=params)]

    async def create_key(self, tenant: str, role: str, name: str = "") -> KeyCreated:
        """The returned ``key`` is shown this once; only its hash is stored."""
        body = {"tenant": tenant, "role": role, "name": name}
        return KeyCreated.model_validate(await self._object("POST", "/admin/keys", json=body))

    async def revoke_key(self, key_id: str) -> KeyRevoked:
        return KeyRevoked.model_validate(await self._object("DELETE", f"/admin/keys/{key_id}"))

    async def usage(self, tenant: str | None = None) -> list[UsageOut]:
        params = {"tenant": tenant} if tenant else {}
        return [UsageOut.model_validate(x) for x in await self._data("/admin/usage", params=params)]

    async def audit(self, tenant: str | None = None, limit: int = 50) -> list[AuditEntry]:
        params: dict[str, Any] = {"limit": limit}
        if tenant:
            params["tenant"] = tenant
        return [
            AuditEntry.model_validate(x) for x in await self._data("/admin/audit", params=params)
        ]
