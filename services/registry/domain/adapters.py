"""Adapters (named lines of versions) and their immutable versions.

A push validates the archive completely (``shared.adapters.archive``) before anything is
stored, then stores the blob (atomic, content-addressed) and records the version in one
transaction. Two simultaneous pushes race only on the version number; the unique constraint
decides and the loser retries with the next number.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.registry.domain import catalog
from services.registry.domain.events import enqueue_event
from services.registry.storage.artifacts import FileArtifactStore
from services.registry.storage.tables import AdapterRow, VersionCounterRow, VersionRow
from shared.adapters.archive import ArchiveLimits, validate_archive
from shared.countlimit import lock_tenant
from shared.db import Database
from shared.errors import Conflict, InternalError, NotFound, RateLimited, Unprocessable
from shared.modelref import version_ref
from shared.schemas.registry import VersionMetadata

PUSH_RETRIES = 8


def new_adapter_id() -> str:
    return "ad-" + secrets.token_hex(12)


def find_adapter(s: Session, tenant: str, name: str) -> AdapterRow | None:
    return s.scalars(
        select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.name == name)
    ).first()


def get_adapter(s: Session, tenant: str, name: str, *, lock: bool = False) -> AdapterRow:
    """Another tenant's adapter is indistinguishable from a missing one (404)."""
    stmt = select(AdapterRow).where(AdapterRow.tenant == tenant, AdapterRow.name == name)
    if lock:
        stmt = stmt.with_for_update()
    row = s.scalars(stmt).first()
    if row is None:
        raise NotFound(f"adapter {name!r} not found", param="name", code="adapter_not_found")
    return row


def create_adapter(
    s: Session, tenant: str, name: str, description: str = "", *, max_adapters: int | None = None
) -> AdapterRow:
    """``max_adapters``: the tenant's limit (429 at it), checked atomically with the insert
    (``s`` must be a write session)."""
    if max_adapters is not None:
        _check_adapter_room(s, tenant, max_adapters)
    if find_adapter(s, tenant, name) is not None:
        raise Conflict(f"adapter {name!r} already exists", param="name", code="adapter_exists")
    return _insert_adapter(s, tenant, name, description)


def _check_adapter_room(s: Session, tenant: str, limit: int) -> None:
    """429 if ``tenant`` has ``limit`` adapters; holds the tenant's adapter-count lock until
    the transaction (which inserts the new one) ends: ``shared.countlimit``."""
    lock_tenant(s, "adapters", tenant)
    count = s.scalar(select(func.count(AdapterRow.id)).where(AdapterRow.tenant == tenant)) or 0
    if count >= limit:
        raise RateLimited(
            f"adapter quota reached: at most {limit} adapters per tenant; delete one or ask an "
            "admin to raise max_adapters",
            retry_after=60,
            code="adapter_quota_exceeded",
        )


def _insert_adapter(s: Session, tenant: str, name: str, description: str = "") -> AdapterRow:
    """Insert without looking first: a concurrent insert surfaces as IntegrityError."""
    row = AdapterRow(id=new_adapter_id(), tenant=tenant, name=name, description=description)
    s.add(row)
    s.flush()
    return row


def list_adapters(
    s: Session, tenant: str, after: str | None, limit: int
) -> tuple[list[AdapterRow], bool]:
    stmt = select(AdapterRow).where(AdapterRow.tenant == tenant).order_by(AdapterRow.name)
    if after:
        stmt = stmt.where(AdapterRow.name > after)
    rows = list(s.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_version(s: Session, tenant: str, name: str, number: int) -> VersionRow:
    adapter = get_adapter(s, tenant, name)
    row = s.scalars(
        select(VersionRow).where(VersionRow.adapter_id == adapter.id, VersionRow.number == number)
    ).first()
    if row is None:
        raise NotFound(
            f"adapter {name!r} has no version {number}", param="version", code="version_not_found"
        )
    return row


def list_versions(
    s: Session, tenant: str, name: str, after: int | None, limit: int
) -> tuple[list[VersionRow], bool]:
    adapter = get_adapter(s, tenant, name)
    stmt = select(VersionRow).where(VersionRow.adapter_id == adapter.id).order_by(VersionRow.number)
    if after is not None:
        stmt = stmt.where(VersionRow.number > after)
    rows = list(s.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


@dataclass(frozen=True)
class PushPolicy:
    max_rank: int
    limits: ArchiveLimits
    system_urls: list[str]


def push_version(
    db: Database,
    store: FileArtifactStore,
    *,
    tenant: str,
    name: str,
    archive: Path,
    meta: VersionMetadata,
    actor: str,
    policy: PushPolicy,
    max_adapters: int | None = None,
) -> VersionRow:
    """Validate, store and record one adapter version. Nothing is kept if validation fails.
    ``max_adapters``: the tenant's limit, when this first version creates the adapter."""
    with db.session() as s:
        base = catalog.get_model(s, tenant, meta.base_model, param="metadata.base_model")
        spec = catalog.spec_of(base)
    work = Path(tempfile.mkdtemp(prefix="push-", dir=store.staging_dir()))
    try:
        _, info = validate_archive(
            archive, work, spec, max_rank=policy.max_rank, limits=policy.limits
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digest, size = store.put_file(archive)
    lineage = meta.lineage.model_copy(update={"base_model": meta.lineage.base_model or base.id})
    for _ in range(PUSH_RETRIES):
        try:
            with db.session(write=True) as s:
                # Not create_adapter: between our lookup and its own, a concurrent first push
                # may commit the adapter, and its 409 would end this push; the insert's
                # IntegrityError instead sends us round again to find it.
                # A concurrent delete of another adapter with these same bytes may have
                # removed the blob since put_file found it: check and restore it under the
                # blob's lock, so this version is never committed without its archive.
                lock_blob(s, digest)
                if not store.exists(digest):
                    store.put_file(archive)
                adapter = find_adapter(s, tenant, name)
                if adapter is None:  # the first version creates the adapter
                    if max_adapters is not None:
                        _check_adapter_room(s, tenant, max_adapters)
                    adapter = _insert_adapter(s, tenant, name)
                number = next_version_number(s, adapter)
                row = VersionRow(
                    adapter_id=adapter.id,
                    number=number,
                    sha256=digest,
                    size_bytes=size,
                    base_model=base.id,
                    rank=info.rank,
                    alpha=info.alpha,
                    target_modules=list(info.target_modules),
                    description=meta.description,
                    lineage=lineage.model_dump(),
                    labels=meta.labels,
                    created_by=actor,
                )
                s.add(row)
                s.flush()
                enqueue_event(
                    s,
                    tenant,
                    "version.created",
                    {
                        "adapter": name,
                        "version": number,
                        "sha256": digest,
                        "ref": version_ref(tenant, name, number),
                        "base_model": base.id,
                    },
                    policy.system_urls,
                )
                s.expunge(row)
                return row
        except IntegrityError:
            continue  # a concurrent push took this number (or created the adapter); go again
    raise InternalError("could not allocate a version number under contention")


def next_version_number(s: Session, adapter: AdapterRow) -> int:
    """Take the next number of ``adapter``'s (tenant, name) counter, which outlives deletion:
    after delete + re-create the count continues, so a ref never names other weights. Two
    pushes serialize on the counter row; a concurrent first insert surfaces as IntegrityError
    (the caller's retry loop goes again)."""
    key = (VersionCounterRow.tenant == adapter.tenant, VersionCounterRow.name == adapter.name)
    bumped = s.execute(
        update(VersionCounterRow).where(*key).values(last_number=VersionCounterRow.last_number + 1)
    )
    highest = (
        s.scalar(select(func.max(VersionRow.number)).where(VersionRow.adapter_id == adapter.id))
        or 0
    )
    if getattr(bumped, "rowcount", 0) == 0:
        s.add(VersionCounterRow(tenant=adapter.tenant, name=adapter.name, last_number=highest + 1))
        s.flush()
        return highest + 1
    number = s.scalar(select(VersionCounterRow.last_number).where(*key)) or 0
    if number <= highest:  # a counter behind its versions (restored backup): never collide
        number = highest + 1
        s.execute(update(VersionCounterRow).where(*key).values(last_number=number))
    return number


def delete_adapter(
    db: Database,
    store: FileArtifactStore,
    tenant: str,
    name: str,
    *,
    system_urls: list[str] | None = None,
) -> None:
    """Remove an adapter with its versions and aliases; blobs no version uses any more go too.

    Inference replicas keep their own verified copies, so nothing they may still load is
    deleted from under them.
    """
    with db.session(write=True) as s:
        adapter = get_adapter(s, tenant, name, lock=True)
        if adapter.aliases:
            names = ", ".join(sorted(a.name for a in adapter.aliases))
            raise Unprocessable(
                f"adapter {name!r} still has aliases ({names}); delete them first",
                param="name",
                code="adapter_has_aliases",
            )
        digests = {v.sha256 for v in adapter.versions}
        numbers = sorted(v.number for v in adapter.versions)
        s.delete(adapter)
        s.flush()
        # replicas drop its cached resolutions and metric series; tenants may subscribe
        enqueue_event(
            s, tenant, "adapter.deleted", {"adapter": name, "versions": numbers}, system_urls or []
        )
    for digest in sorted(digests):
        _delete_blob_unless_used(db, store, digest)


def lock_blob(s: Session, digest: str) -> None:
    """Serialize pushes and deletes of one blob until the transaction ends: SQLite's write
    transactions exclude each other (once begun: ``connection()`` begins it now); Postgres
    takes an advisory lock on the digest."""
    s.connection()
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(digest[:15], 16)})


def _delete_blob_unless_used(db: Database, store: FileArtifactStore, digest: str) -> None:
    """Remove a blob no version uses, deciding and deleting under the blob's lock: a push of
    the same bytes either committed first (the blob stays) or restores it before committing."""
    with db.session(write=True) as s:
        lock_blob(s, digest)
        used = s.scalars(select(VersionRow.id).where(VersionRow.sha256 == digest).limit(1)).first()
        if used is None:
            store.delete(digest)
