"""``/v1/files``: upload (multipart), list, retrieve, content, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from services.training.deps import State
from services.training.domain import files as domain
from services.training.storage.files import TMP_PREFIX
from shared.auth import TenantId
from shared.errors import InvalidRequest
from shared.schemas.common import DEFAULT_LIMIT, MAX_LIMIT, ListResponse
from shared.schemas.training import FileDeleted, FileOut
from shared.uploads import spool_upload

router = APIRouter(tags=["files"])
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post("/v1/files", response_model=FileOut, status_code=200)
async def upload_file(
    st: State,
    tenant: TenantId,
    file: Annotated[UploadFile, File(description="JSONL or CSV training data")],
    purpose: Annotated[str, Form(max_length=32)],
    mapping: Annotated[str | None, Form(max_length=64 * 1024)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> FileOut:
    if purpose != domain.PURPOSE:
        raise InvalidRequest(
            f"purpose must be {domain.PURPOSE!r}, got {purpose!r}", param="purpose"
        )
    fields = domain.parse_mapping(mapping)
    upload = await anyio.to_thread.run_sync(
        lambda: spool_upload(
            file.file,
            limit=st.settings.max_upload_bytes,
            dest_dir=st.store.staging_dir(),
            prefix=TMP_PREFIX,  # a crash's leftover goes in BlobStore.sweep_partial
        )
    )
    with upload:
        if not upload.size:
            raise InvalidRequest("file is empty", param="file", code="invalid_training_file")
        filename = file.filename or "upload.jsonl"
        tok = await st.lifecycle.tokenizer(tenant, st.settings.default_base_model)
        check = await anyio.to_thread.run_sync(
            domain.check_upload, upload.path, filename, fields, tok, st.settings.max_len
        )
        row = await anyio.to_thread.run_sync(
            lambda: domain.create_file(
                st.db,
                st.store,
                tenant=tenant,
                filename=filename,
                upload=upload,
                mapping=fields,
                check=check,
                idempotency_key=idempotency_key,
            )
        )
    return domain.file_out(row, [])


@router.get("/v1/files", response_model=ListResponse[FileOut])
def list_files(
    st: State, tenant: TenantId, after: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[FileOut]:
    with st.db.session() as s:
        rows, more = domain.list_files(s, tenant, after, limit)
        return ListResponse(
            data=[domain.file_out(r, domain.datasets_of(s, r.id)) for r in rows], has_more=more
        )


@router.get("/v1/files/{file_id}", response_model=FileOut)
def get_file(file_id: str, st: State, tenant: TenantId) -> FileOut:
    with st.db.session() as s:
        row = domain.get_file(s, tenant, file_id)
        return domain.file_out(row, domain.datasets_of(s, row.id))


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, st: State, tenant: TenantId) -> Response:
    with st.db.session() as s:
        row = domain.get_file(s, tenant, file_id)
    source = st.store.source(domain.file_key(row.id), tenant=row.tenant)
    if isinstance(source, Path):  # streamed from disk, not read whole
        return FileResponse(source, media_type="application/octet-stream")
    # decrypted a chunk at a time (a blob of another record or key: 500 before the answer)
    chunks = st.store.chunks(domain.file_key(row.id), tenant=row.tenant)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, st: State, tenant: TenantId) -> FileDeleted:
    purged = domain.delete_file(st.db, st.store, tenant, file_id)
    return FileDeleted(id=file_id, datasets_deleted=purged)
