"""Aliases (``production``, ``staging``, any name) and their audited moves.

A move locks the adapter row (Postgres) or takes the write lock (SQLite) so two simultaneous
moves serialize: the final alias and the move history always agree.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.domain.adapters import get_adapter, get_version
from services.registry.domain.events import enqueue_event
from services.registry.storage.tables import AliasMoveRow, AliasRow
from shared.db import Database, now
from shared.errors import InvalidRequest, NotFound
from shared.modelref import ALIAS_RE, version_ref


def check_alias_name(alias: str) -> None:
    if (
        not ALIAS_RE.fullmatch(alias)
        or alias.isdigit()
        or (alias[:1] == "v" and alias[1:].isdigit())
    ):
        raise InvalidRequest(
            f"alias {alias!r} is invalid: lowercase letters, digits, '_' or '-', starting with a "
            "letter, and not a version like 'v3'",
            param="alias",
            code="invalid_alias",
        )


def get_alias(s: Session, tenant: str, name: str, alias: str) -> AliasRow:
    adapter = get_adapter(s, tenant, name)
    row = s.get(AliasRow, (adapter.id, alias))
    if row is None:
        raise NotFound(
            f"adapter {name!r} has no alias {alias!r}", param="alias", code="alias_not_found"
        )
    return row


def set_alias(
    db: Database,
    *,
    tenant: str,
    name: str,
    alias: str,
    version: int,
    actor: str,
    request_id: str | None,
    system_urls: list[str],
) -> tuple[AliasRow, int | None]:
    """Point ``alias`` at ``version``; returns the alias and the version it pointed at before."""
    check_alias_name(alias)
    with db.session(write=True) as s:
        adapter = get_adapter(s, tenant, name, lock=True)
        get_version(s, tenant, name, version)  # 404 if the target version does not exist
        row = s.get(AliasRow, (adapter.id, alias))
        previous = row.version if row else None
        if row is None:
            row = AliasRow(adapter_id=adapter.id, name=alias, version=version)
            s.add(row)
        row.version = version
        row.updated_at = now()
        s.add(
            AliasMoveRow(
                tenant=tenant,
                adapter=name,
                alias=alias,
                from_version=previous,
                to_version=version,
                actor=actor,
                request_id=request_id,
            )
        )
        if previous != version:
            enqueue_event(
                s,
                tenant,
                "alias.moved",
                {
                    "adapter": name,
                    "alias": alias,
                    "from_version": previous,
                    "to_version": version,
                    "ref": version_ref(tenant, name, version),
                },
                system_urls,
            )
        s.flush()
        s.expunge(row)
        return row, previous


def delete_alias(
    db: Database,
    *,
    tenant: str,
    name: str,
    alias: str,
    actor: str,
    request_id: str | None,
    system_urls: list[str],
) -> None:
    with db.session(write=True) as s:
        adapter = get_adapter(s, tenant, name, lock=True)
        row = s.get(AliasRow, (adapter.id, alias))
        if row is None:
            raise NotFound(
                f"adapter {name!r} has no alias {alias!r}", param="alias", code="alias_not_found"
            )
        drop_alias(s, tenant, name, row, actor=actor, request_id=request_id, urls=system_urls)


def drop_alias(
    s: Session,
    tenant: str,
    name: str,
    row: AliasRow,
    *,
    actor: str,
    request_id: str | None,
    urls: list[str],
) -> None:
    """Delete an alias in ``s``'s transaction: its move is recorded, ``alias.deleted`` queued."""
    s.add(
        AliasMoveRow(
            tenant=tenant,
            adapter=name,
            alias=row.name,
            from_version=row.version,
            to_version=None,
            actor=actor,
            request_id=request_id,
        )
    )
    enqueue_event(
        s,
        tenant,
        "alias.deleted",
        {
            "adapter": name,
            "alias": row.name,
            "from_version": row.version,
        },
        urls,
    )
    s.delete(row)


def list_moves(s: Session, tenant: str, name: str, limit: int) -> list[AliasMoveRow]:
    get_adapter(s, tenant, name)
    return list(
        s.scalars(
            select(AliasMoveRow)
            .where(AliasMoveRow.tenant == tenant, AliasMoveRow.adapter == name)
            .order_by(AliasMoveRow.id.desc())
            .limit(limit)
        )
    )
