"""Adapters, versions (archive push/download) and aliases."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from services.registry.deps import Actor, State
from services.registry.domain import adapters as domain
from services.registry.domain import aliases, version_delete
from services.registry.domain.views import adapter_out, alias_out, move_out, version_out
from shared.app import request_id_of
from shared.auth import TenantId
from shared.countlimit import MAX_ADAPTERS_HEADER
from shared.errors import InvalidRequest
from shared.jsonbody import form_model
from shared.modelref import NAME_RE, version_ref
from shared.schemas.common import DEFAULT_LIMIT, MAX_LIMIT, ListResponse
from shared.schemas.registry import (
    AdapterCreate,
    AdapterOut,
    AdapterVersionOut,
    AliasMoveOut,
    AliasOut,
    AliasSet,
    VersionMetadata,
)
from shared.uploads import spool_upload

router = APIRouter(tags=["adapters"])
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
# The tenant's adapter limit, sent by the gateway (internal token); absent: no limit here.
MaxAdapters = Annotated[
    int | None, Header(alias=MAX_ADAPTERS_HEADER, ge=1, include_in_schema=False)
]


@router.get("/v1/adapters", response_model=ListResponse[AdapterOut])
def list_adapters(
    st: State, tenant: TenantId, after: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[AdapterOut]:
    with st.db.session() as s:
        rows, more = domain.list_adapters(s, tenant, after, limit)
        return ListResponse(data=[adapter_out(r) for r in rows], has_more=more)


@router.post("/v1/adapters", response_model=AdapterOut, status_code=201)
def create_adapter(
    body: AdapterCreate, st: State, tenant: TenantId, max_adapters: MaxAdapters = None
) -> AdapterOut:
    with st.db.session(write=True) as s:
        row = domain.create_adapter(
            s, tenant, body.name, body.description, max_adapters=max_adapters
        )
        return adapter_out(row)


@router.get("/v1/adapters/{name}", response_model=AdapterOut)
def get_adapter(name: str, st: State, tenant: TenantId) -> AdapterOut:
    with st.db.session() as s:
        return adapter_out(domain.get_adapter(s, tenant, name))


@router.delete("/v1/adapters/{name}")
def delete_adapter(name: str, st: State, tenant: TenantId) -> dict[str, object]:
    domain.delete_adapter(st.db, st.store, tenant, name, system_urls=st.policy.system_urls)
    return {"id": name, "object": "adapter", "deleted": True}


@router.post("/v1/adapters/{name}/versions", response_model=AdapterVersionOut, status_code=201)
def push_version(
    name: str,
    request: Request,
    st: State,
    tenant: TenantId,
    actor: Actor,
    file: Annotated[UploadFile, File(description="PEFT LoRA adapter directory as .tar.gz")],
    metadata: Annotated[str, Form(max_length=64 * 1024)],
    max_adapters: MaxAdapters = None,
) -> AdapterVersionOut:
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest(f"adapter name {name!r} is invalid", param="name")
    meta = form_model(metadata, VersionMetadata, param="metadata")
    archive = spool_upload(
        file.file,
        limit=st.policy.limits.max_archive_bytes,
        dest_dir=st.store.staging_dir(),
        suffix=".tar.gz",
        what="archive",
        code="archive_too_large",
    )
    with archive:
        row = domain.push_version(
            st.db,
            st.store,
            tenant=tenant,
            name=name,
            archive=archive.path,
            meta=meta,
            actor=actor,
            policy=st.policy,
            max_adapters=max_adapters,
        )
    st.dispatcher.notify()
    return version_out(tenant, name, row)


@router.get("/v1/adapters/{name}/versions", response_model=ListResponse[AdapterVersionOut])
def list_versions(
    name: str, st: State, tenant: TenantId, after: int | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[AdapterVersionOut]:
    with st.db.session() as s:
        rows, more = domain.list_versions(s, tenant, name, after, limit)
        return ListResponse(data=[version_out(tenant, name, r) for r in rows], has_more=more)


@router.get("/v1/adapters/{name}/versions/{version}", response_model=AdapterVersionOut)
def get_version(name: str, version: int, st: State, tenant: TenantId) -> AdapterVersionOut:
    with st.db.session() as s:
        return version_out(tenant, name, domain.get_version(s, tenant, name, version))


@router.delete("/v1/adapters/{name}/versions/{version}")
def delete_version(
    name: str, version: int, request: Request, st: State, tenant: TenantId, actor: Actor
) -> dict[str, object]:
    """Delete one version (and the aliases on it): replicas unload it, gateways forget it."""
    dropped = version_delete.delete_version(
        st.db,
        st.store,
        tenant,
        name,
        version,
        actor=actor,
        request_id=request_id_of(request),
        system_urls=st.policy.system_urls,
    )
    st.dispatcher.notify()
    return {
        "id": version_ref(tenant, name, version),
        "object": "adapter.version",
        "deleted": True,
        "aliases_deleted": dropped,
    }


@router.get("/v1/adapters/{name}/versions/{version}/archive")
def download_archive(name: str, version: int, st: State, tenant: TenantId) -> Response:
    """The stored archive, verified against its sha256 before a byte is sent."""
    with st.db.session() as s:
        row = domain.get_version(s, tenant, name, version)
    # Verify then send a private hard-linked snapshot: the blob cannot change mid-download.
    st.store.open(row.sha256).close()
    snapshot = Path(tempfile.mkdtemp(dir=st.store.staging_dir())) / "a.tar.gz"
    os.link(st.store.path(row.sha256), snapshot)
    return FileResponse(
        snapshot,
        media_type="application/gzip",
        filename=f"{name}-v{version}.tar.gz",
        headers={"X-Tunefleet-Sha256": row.sha256, "ETag": f'"{row.sha256}"'},
        background=BackgroundTask(shutil.rmtree, snapshot.parent, ignore_errors=True),
    )


@router.put("/v1/adapters/{name}/aliases/{alias}", response_model=AliasOut)
def set_alias(
    name: str,
    alias: str,
    body: AliasSet,
    request: Request,
    st: State,
    tenant: TenantId,
    actor: Actor,
) -> AliasOut:
    row, previous = aliases.set_alias(
        st.db,
        tenant=tenant,
        name=name,
        alias=alias,
        version=body.version,
        actor=actor,
        request_id=request_id_of(request),
        system_urls=st.policy.system_urls,
    )
    st.dispatcher.notify()
    return alias_out(tenant, name, row, previous)


@router.get("/v1/adapters/{name}/aliases/{alias}", response_model=AliasOut)
def get_alias(name: str, alias: str, st: State, tenant: TenantId) -> AliasOut:
    with st.db.session() as s:
        return alias_out(tenant, name, aliases.get_alias(s, tenant, name, alias))


@router.delete("/v1/adapters/{name}/aliases/{alias}")
def delete_alias(
    name: str, alias: str, request: Request, st: State, tenant: TenantId, actor: Actor
) -> dict[str, object]:
    aliases.delete_alias(
        st.db,
        tenant=tenant,
        name=name,
        alias=alias,
        actor=actor,
        request_id=request_id_of(request),
        system_urls=st.policy.system_urls,
    )
    st.dispatcher.notify()
    return {"id": f"{name}@{alias}", "object": "adapter.alias", "deleted": True}


@router.get("/v1/adapters/{name}/alias-moves", response_model=ListResponse[AliasMoveOut])
def alias_moves(
    name: str, st: State, tenant: TenantId, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[AliasMoveOut]:
    with st.db.session() as s:
        return ListResponse(data=[move_out(m) for m in aliases.list_moves(s, tenant, name, limit)])
