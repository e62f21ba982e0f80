"""Deleting one adapter version (an erasure retires the versions trained on erased data).

The version's row goes, with the aliases that point at it (each recorded as a move and
announced as ``alias.deleted``), in one transaction that queues ``adapter.deleted`` naming
that version: every gateway drops the adapter's cached resolutions and every replica unloads
the adapter's loaded versions and removes their unpacked copies (the others load again on
their next request). The blob goes once no version uses it. The adapter itself stays, with
its other versions; its version counter never hands the number out again.
"""

from __future__ import annotations

from sqlalchemy import select

from services.registry.domain.adapters import _delete_blob_unless_used, get_adapter
from services.registry.domain.aliases import drop_alias
from services.registry.domain.events import enqueue_event
from services.registry.storage.artifacts import FileArtifactStore
from services.registry.storage.tables import AliasRow, VersionRow
from shared.db import Database
from shared.errors import NotFound


def delete_version(
    db: Database,
    store: FileArtifactStore,
    tenant: str,
    name: str,
    number: int,
    *,
    actor: str,
    request_id: str | None,
    system_urls: list[str] | None = None,
) -> list[str]:
    """Delete version ``number`` of the tenant's adapter ``name``; the aliases that pointed
    at it (deleted too). 404 ``version_not_found`` if there is no such version."""
    urls = system_urls or []
    with db.session(write=True) as s:
        adapter = get_adapter(s, tenant, name, lock=True)
        mine = (VersionRow.adapter_id == adapter.id, VersionRow.number == number)
        row = s.scalars(select(VersionRow).where(*mine)).first()
        if row is None:
            raise NotFound(
                f"adapter {name!r} has no version {number}",
                param="version",
                code="version_not_found",
            )
        pointing = s.scalars(
            select(AliasRow).where(AliasRow.adapter_id == adapter.id, AliasRow.version == number)
        ).all()
        aliases = sorted(a.name for a in pointing)
        for alias in pointing:
            drop_alias(s, tenant, name, alias, actor=actor, request_id=request_id, urls=urls)
        digest = row.sha256
        s.delete(row)
        s.flush()
        enqueue_event(s, tenant, "adapter.deleted", {"adapter": name, "versions": [number]}, urls)
    _delete_blob_unless_used(db, store, digest)
    return aliases
