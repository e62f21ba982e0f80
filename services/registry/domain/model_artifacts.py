"""Uploaded base models: a tenant's merged model stored as an archive in the blob store.

``push_model`` validates the archive (``shared.models.artifact``: safe members, safetensors
headers, size caps), describes the unpacked model for the catalog, stores the archive by
sha256 and records the row; nothing is kept when any step fails. Replicas download it
(``archive_of``) and verify the sha256 themselves, as they do adapter archives.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from services.registry.domain.adapters import lock_blob
from services.registry.domain.catalog import describe_model_dir, get_model
from services.registry.storage.artifacts import FileArtifactStore
from services.registry.storage.tables import BaseModelRow, VersionRow
from shared.adapters.extract import ArchiveLimits
from shared.db import Database
from shared.errors import Conflict, NotFound
from shared.models.artifact import unpack_model_archive
from shared.schemas.registry import BaseModelMetadata


@dataclass(frozen=True)
class ModelPolicy:
    """Bounds on an uploaded model archive (the registry's settings)."""

    limits: ArchiveLimits


def _taken(model_id: str) -> Conflict:
    return Conflict(f"base model {model_id!r} already exists", param="metadata.id")


def push_model(
    db: Database,
    store: FileArtifactStore,
    *,
    tenant: str,
    archive: Path,
    meta: BaseModelMetadata,
    policy: ModelPolicy,
) -> BaseModelRow:
    """Validate, describe, store and record one uploaded model for ``tenant``."""
    with db.session() as s:
        if s.get(BaseModelRow, meta.id) is not None:
            raise _taken(meta.id)  # before unpacking gigabytes for nothing
    work = Path(tempfile.mkdtemp(prefix="model-", dir=store.staging_dir()))
    try:
        unpack_model_archive(archive, work / "model", policy.limits)
        info = describe_model_dir(work / "model")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digest, size = store.put_file(archive)
    try:
        with db.session(write=True) as s:
            lock_blob(s, digest)
            if not store.exists(digest):  # a concurrent delete of equal bytes
                store.put_file(archive)
            if s.get(BaseModelRow, meta.id) is not None:
                raise _taken(meta.id)
            row = BaseModelRow(
                id=meta.id,
                owner=tenant,
                path=None,
                artifact_sha256=digest,
                size_bytes=size,
                hub_id=meta.hub_id,
                revision=meta.revision,
                architecture=str(info["architecture"]),
                max_context=meta.max_context or int(info["max_context"]),  # type: ignore[call-overload]
                weights_sha256=str(info["weights_sha256"]),
                has_chat_template=bool(info["has_chat_template"]),
                linear_shapes=info["linear_shapes"],
            )
            s.add(row)
            s.flush()  # column defaults (created_at) for the caller's view
            return row
    except BaseException:
        delete_blob_unless_used(db, store, digest)
        raise


def archive_of(db: Database, tenant: str, model_id: str) -> BaseModelRow:
    """The row of an uploaded model ``tenant`` may use; 404 for a seeded one (no archive)."""
    with db.session() as s:
        row = get_model(s, tenant, model_id, param="model_id")
    if row.artifact_sha256 is None:
        raise NotFound(
            f"base model {model_id!r} is a seeded model directory, not an uploaded archive",
            param="model_id",
            code="base_model_has_no_archive",
        )
    return row


def delete_blob_unless_used(db: Database, store: FileArtifactStore, digest: str) -> None:
    """Remove a model archive no catalog row (nor adapter version) uses, under its lock."""
    with db.session(write=True) as s:
        lock_blob(s, digest)
        model = select(BaseModelRow.id).where(BaseModelRow.artifact_sha256 == digest).limit(1)
        version = select(VersionRow.id).where(VersionRow.sha256 == digest).limit(1)
        if s.scalars(model).first() is None and s.scalars(version).first() is None:
            store.delete(digest)
