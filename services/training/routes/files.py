"""``/v1/files``: upload (multipart), list, retrieve, content, delete."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile

from services.training.deps import State
from services.training.domain import files as domain
from shared.auth import TenantId
from shared.errors import InvalidRequest, PayloadTooLarge
from shared.schemas.common import DEFAULT_LIMIT, MAX_LIMIT, ListResponse
from shared.schemas.training import FileDeleted, FileOut

router = APIRouter(tags=["files"])
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := upload.file.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"file exceeds the upload limit of {limit} bytes",
                param="file",
                code="file_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
    data = await anyio.to_thread.run_sync(_read_limited, file, st.settings.max_upload_bytes)
    if not data:
        raise InvalidRequest("file is empty", param="file", code="invalid_training_file")
    filename = file.filename or "upload.jsonl"
    tok = await st.lifecycle.tokenizer(tenant, st.settings.default_base_model)
    check = await anyio.to_thread.run_sync(
        domain.check_upload, data, filename, fields, tok, st.settings.max_len
    )
    row = await anyio.to_thread.run_sync(
        lambda: domain.create_file(
            st.db,
            st.store,
            tenant=tenant,
            filename=filename,
            data=data,
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
    data = st.store.get(domain.file_key(row.id))
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, st: State, tenant: TenantId) -> FileDeleted:
    purged = domain.delete_file(st.db, st.store, tenant, file_id)
    return FileDeleted(id=file_id, datasets_deleted=purged)
