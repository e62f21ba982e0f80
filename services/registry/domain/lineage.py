"""Which adapter versions were trained on given data: the lineage query behind erasure.

Lineage is a JSON document on each version (``shared.schemas.registry.Lineage``); matching
is done in Python over the versions, a page at a time, rather than with JSON operators,
which differ between SQLite and Postgres. Erasure is rare and the version table is small
next to the data it describes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.storage.tables import AdapterRow, VersionRow

_PAGE = 500
FIELDS = ("job_id", "dataset_id", "training_file")


@dataclass(frozen=True)
class LineageMatch:
    tenant: str
    adapter: str
    version: VersionRow
    matched: list[str]  # "job_id:ftjob-…", "dataset_id:ds-…", "training_file:file-…"


def _versions(s: Session, tenant: str | None) -> Iterator[tuple[str, str, VersionRow]]:
    last = 0
    while True:
        q = (
            select(AdapterRow.tenant, AdapterRow.name, VersionRow)
            .join(VersionRow, VersionRow.adapter_id == AdapterRow.id)
            .where(VersionRow.id > last)
            .order_by(VersionRow.id)
            .limit(_PAGE)
        )
        if tenant is not None:
            q = q.where(AdapterRow.tenant == tenant)
        rows = [(t, n, v) for t, n, v in s.execute(q)]
        if not rows:
            return
        yield from rows
        last = rows[-1][2].id


def versions_using(
    s: Session,
    *,
    jobs: set[str],
    datasets: set[str],
    files: set[str],
    tenant: str | None = None,
) -> list[LineageMatch]:
    """Versions whose lineage names one of these jobs, datasets or training files."""
    wanted = {"job_id": jobs, "dataset_id": datasets, "training_file": files}
    out = []
    for owner, name, row in _versions(s, tenant):
        lineage = row.lineage or {}
        matched = [f"{k}:{lineage[k]}" for k in FIELDS if lineage.get(k) in wanted[k]]
        if matched:
            out.append(LineageMatch(owner, name, row, matched))
    return out
