"""Base-model catalog and model resolution routes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from services.registry.deps import State
from services.registry.domain import catalog, model_artifacts
from services.registry.domain.resolve import resolve_model
from services.registry.domain.views import base_model_out
from shared.auth import TenantId
from shared.bodylimit import upload_route
from shared.jsonbody import form_model
from shared.schemas.common import ListResponse
from shared.schemas.registry import BaseModelMetadata, BaseModelOut, Resolution
from shared.uploads import spool_upload

router = APIRouter(tags=["catalog"])
MODEL_ARCHIVE_LIMIT = "model_archive"  # its own body limit: models are far larger than adapters


@router.get("/v1/base-models", response_model=ListResponse[BaseModelOut])
def list_base_models(st: State, tenant: TenantId) -> ListResponse[BaseModelOut]:
    with st.db.session() as s:
        return ListResponse(data=[base_model_out(r) for r in catalog.list_models(s, tenant)])


@router.get("/v1/base-models/{model_id}", response_model=BaseModelOut)
def get_base_model(model_id: str, st: State, tenant: TenantId) -> BaseModelOut:
    with st.db.session() as s:
        return base_model_out(catalog.get_model(s, tenant, model_id, param="model_id"))


@router.post(
    "/v1/base-models",
    response_model=BaseModelOut,
    status_code=201,
    openapi_extra=upload_route(MODEL_ARCHIVE_LIMIT),
)
def upload_base_model(
    st: State,
    tenant: TenantId,
    file: Annotated[UploadFile, File(description="Hugging Face model directory as .tar.gz")],
    metadata: Annotated[str, Form(max_length=64 * 1024)],
) -> BaseModelOut:
    """Store a model archive as the tenant's own base model (a merged fine-tune; the
    ``system`` tenant's are fleet-wide). Validated like adapter archives; replicas download
    it from ``GET /v1/base-models/{id}/archive``."""
    meta = form_model(metadata, BaseModelMetadata, param="metadata")
    archive = spool_upload(
        file.file,
        limit=st.model_policy.limits.max_archive_bytes,
        dest_dir=st.store.staging_dir(),
        suffix=".tar.gz",
        what="archive",
        code="archive_too_large",
    )
    with archive:
        row = model_artifacts.push_model(
            st.db, st.store, tenant=tenant, archive=archive.path, meta=meta, policy=st.model_policy
        )
    return base_model_out(row)


@router.get("/v1/base-models/{model_id}/archive")
def download_base_model(model_id: str, st: State, tenant: TenantId) -> Response:
    """The uploaded model's archive, verified against its sha256 before a byte is sent."""
    row = model_artifacts.archive_of(st.db, tenant, model_id)
    digest = row.artifact_sha256
    assert digest is not None
    st.store.open(digest).close()
    snapshot = Path(tempfile.mkdtemp(dir=st.store.staging_dir())) / "m.tar.gz"
    os.link(st.store.path(digest), snapshot)  # the blob cannot change mid-download
    return FileResponse(
        snapshot,
        media_type="application/gzip",
        filename=f"{model_id}.tar.gz",
        headers={"X-Tunefleet-Sha256": digest, "ETag": f'"{digest}"'},
        background=BackgroundTask(shutil.rmtree, snapshot.parent, ignore_errors=True),
    )


@router.delete("/v1/base-models/{model_id}")
def delete_base_model(model_id: str, st: State, tenant: TenantId) -> dict[str, object]:
    """Remove the tenant's own base model (a full fine-tune) from the catalog, e.g. when
    the data it was trained on is erased; its archive goes too once nothing uses it."""
    with st.db.session(write=True) as s:
        digest = catalog.delete_model(s, tenant, model_id)
    if digest is not None:
        model_artifacts.delete_blob_unless_used(st.db, st.store, digest)
    return {"id": model_id, "object": "base_model", "deleted": True}


@router.get("/v1/resolve", response_model=Resolution)
def resolve(
    st: State, tenant: TenantId, model: Annotated[str, Query(max_length=200)]
) -> Resolution:
    with st.db.session() as s:
        return resolve_model(s, tenant, model)
