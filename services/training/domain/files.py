"""Uploaded files and the immutable prepared datasets derived from them.

An upload is checked at once by the real preparation pipeline (with the default base
model's tokenizer): a file that cannot be trained on is kept with ``status="error"`` and the
line-numbered reason, so a job on it fails with ``invalid_training_file`` before anything
reaches Ray. A bad ``mapping`` is the caller's mistake and is refused (400) with nothing
stored. Deleting a file purges every dataset derived from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.training.data.example import Example
from services.training.data.pipeline import INVALID_FILE, PrepReport, prepare_stream, to_jsonl
from services.training.domain.ids import new_id
from services.training.storage.files import BlobStore
from services.training.storage.tables import DatasetRow, FileRow
from shared.db import Database
from shared.errors import InvalidRequest, NotFound
from shared.schemas.training import FileOut
from shared.uploads import SpooledUpload

PURPOSE = "fine-tune"
TokenizerFor = Callable[[str], Any]  # base model id -> tokenizer


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


SPLITS = ("train", "validation", "test")  # a prepared dataset's splits, in this order


def dataset_key(dataset_id: str, split: str) -> str:
    return f"datasets/{dataset_id}/{split}.jsonl"


def parse_mapping(raw: str | None) -> dict[str, str] | None:
    """The ``mapping`` form field: a JSON object of source field → target."""
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"mapping is not valid JSON: {exc.msg} at char {exc.pos}",
            param="mapping",
            code="invalid_mapping",
        ) from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidRequest(
            "mapping must be a JSON object of source field → target name",
            param="mapping",
            code="invalid_mapping",
        )
    return value


@dataclass(frozen=True)
class UploadCheck:
    status: str
    details: str | None
    report: dict[str, Any] | None


def check_upload(
    data: bytes | Path,
    filename: str,
    mapping: dict[str, str] | None,
    tokenizer: Any,
    max_len: int,
) -> UploadCheck:
    """Run the pipeline once on an upload; a mapping error raises, a data error is recorded."""
    try:
        report = prepare_stream(
            data, filename, mapping=mapping, tokenizer=tokenizer, max_len=max_len
        )
    except InvalidRequest as exc:
        if exc.code != INVALID_FILE:
            raise
        return UploadCheck("error", exc.message, None)
    return UploadCheck("processed", None, report.model_dump(mode="json"))


def create_file(
    db: Database,
    store: BlobStore,
    *,
    tenant: str,
    filename: str,
    upload: SpooledUpload,
    mapping: dict[str, str] | None,
    check: UploadCheck,
    idempotency_key: str | None = None,
) -> FileRow:
    """Store the spooled upload (moved into the store) and the row; a repeated
    ``idempotency_key`` returns the first file."""
    if idempotency_key:
        with db.session() as s:
            if (first := find_by_key(s, tenant, idempotency_key)) is not None:
                return first
    row = FileRow(
        id=new_id("file"),
        tenant=tenant,
        filename=filename[:255],
        purpose=PURPOSE,
        bytes=upload.size,
        sha256=upload.sha256,
        mapping=mapping,
        status=check.status,
        status_details=check.details,
        report=check.report,
        idempotency_key=idempotency_key,
    )
    store.put_file(file_key(row.id), upload.path, tenant=tenant)
    try:
        with db.session(write=True) as s:
            s.add(row)
    except IntegrityError:  # a concurrent retry with the same key won
        store.delete(file_key(row.id))
        with db.session() as s:
            first = find_by_key(s, tenant, idempotency_key or "")
        if first is None:
            raise
        return first
    except BaseException:
        store.delete(file_key(row.id))
        raise
    return row


def find_by_key(s: Session, tenant: str, key: str) -> FileRow | None:
    q = select(FileRow).where(FileRow.tenant == tenant, FileRow.idempotency_key == key)
    return s.scalars(q).first()


def get_file(s: Session, tenant: str, file_id: str, *, param: str = "file_id") -> FileRow:
    row = s.get(FileRow, file_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"no file {file_id!r}", param=param, code="file_not_found")
    return row


def list_files(
    s: Session, tenant: str, after: str | None, limit: int
) -> tuple[list[FileRow], bool]:
    """Newest first; ``after`` is the last id of the previous page."""
    q = select(FileRow).where(FileRow.tenant == tenant)
    if after:
        q = q.where(FileRow.id < after)
    rows = list(s.scalars(q.order_by(FileRow.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def datasets_of(s: Session, file_id: str) -> list[str]:
    q = select(DatasetRow.id).where(
        or_(
            DatasetRow.file_id == file_id,
            DatasetRow.validation_file_id == file_id,
            DatasetRow.test_file_id == file_id,
        )
    )
    return list(s.scalars(q.order_by(DatasetRow.id)))


def delete_file(db: Database, store: BlobStore, tenant: str, file_id: str) -> list[str]:
    """Delete a file and every prepared dataset derived from it; returns the dataset ids."""
    with db.session(write=True) as s:
        get_file(s, tenant, file_id)
        lock_files(s, [file_id])  # a preparation of this file commits before or not at all
        purged = datasets_of(s, file_id)
        s.execute(delete(DatasetRow).where(DatasetRow.id.in_(purged)))
        s.execute(delete(FileRow).where(FileRow.id == file_id))
    for ds in purged:
        store.delete(f"datasets/{ds}")
    store.delete(file_key(file_id))
    return purged


def file_out(row: FileRow, datasets: list[str]) -> FileOut:
    return FileOut(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        filename=row.filename,
        purpose="fine-tune",
        status=row.status,  # type: ignore[arg-type]
        status_details=row.status_details,
        sha256=row.sha256,
        mapping=row.mapping,
        prep_report=row.report,
        datasets=datasets,
    )


def prepare_dataset(
    db: Database,
    store: BlobStore,
    *,
    tenant: str,
    training_file: str,
    validation_file: str | None,
    task: str,
    base_model: str,
    seed: int,
    tokenizer: Any,
    max_len: int,
    test_file: str | None = None,
    test_fraction: float = 0.1,
) -> DatasetRow:
    """Prepare (or reuse) the immutable dataset of a job; ``InvalidRequest`` on bad data."""
    with db.session() as s:
        train = get_file(s, tenant, training_file, param="training_file")
        valid = (
            get_file(s, tenant, validation_file, param="validation_file")
            if validation_file
            else None
        )
        held = get_file(s, tenant, test_file, param="test_file") if test_file else None
        existing = s.scalars(
            select(DatasetRow).where(
                DatasetRow.file_id == train.id,
                DatasetRow.validation_file_id == (valid.id if valid else None),
                DatasetRow.test_file_id == (held.id if held else None),
                DatasetRow.task == task,
                DatasetRow.base_model == base_model,
                DatasetRow.seed == seed,
            )
        ).first()
        if existing is not None:
            return existing
    ds_id = new_id("ds")
    try:
        with ExitStack() as stack:
            # each split streamed into the store as it is routed; an error removes them all
            writers = {
                name: stack.enter_context(store.writer(dataset_key(ds_id, name), tenant=tenant))
                for name in SPLITS
            }
            report = prepare_stream(
                store.source(file_key(train.id), tenant=train.tenant),
                train.filename,
                mapping=train.mapping,
                task=task,
                tokenizer=tokenizer,
                max_len=max_len,
                validation=store.source(file_key(valid.id), tenant=valid.tenant) if valid else None,
                validation_filename=valid.filename if valid else None,
                seed=seed,
                test=store.source(file_key(held.id), tenant=held.tenant) if held else None,
                test_filename=held.filename if held else None,
                test_fraction=test_fraction,
                sink=_JsonlSink(writers),
                spill_dir=store.staging_dir(),
            )
            _check_not_empty(report, train.filename)
    except BaseException:
        store.delete(f"datasets/{ds_id}")  # the folder the writers made
        raise
    row = DatasetRow(
        id=ds_id,
        tenant=tenant,
        file_id=train.id,
        validation_file_id=valid.id if valid else None,
        test_file_id=held.id if held else None,
        task=task,
        base_model=base_model,
        seed=seed,
        report=report.model_dump(mode="json"),
    )
    sources = {train.id, *(f.id for f in (valid, held) if f is not None)}
    try:
        with db.session(write=True) as s:
            # the sources may have been erased or deleted while this ran: a dataset of an
            # erased file must never appear after the erasure answered
            if gone := sources - lock_files(s, sorted(sources)):
                raise NotFound(
                    f"file {sorted(gone)[0]!r} was deleted while its dataset was prepared",
                    param="training_file",
                    code="file_not_found",
                )
            s.add(row)
    except BaseException:
        store.delete(f"datasets/{row.id}")
        raise
    return row


class _JsonlSink:
    """Writes each prepared example as a JSON line into its split's blob writer."""

    def __init__(self, writers: dict[str, BinaryIO]) -> None:
        self.writers = writers

    def write(self, split: str, example: Example) -> None:
        self.writers[split].write(to_jsonl([example]))


def _check_not_empty(report: PrepReport, filename: str) -> None:
    if not report.split.train:
        raise InvalidRequest(
            f"{filename}: no training examples left after preparation",
            param="training_file",
            code=INVALID_FILE,
        )


def lock_files(s: Session, file_ids: list[str]) -> set[str]:
    """Lock these file rows for the transaction (Postgres ``FOR UPDATE``; SQLite's write
    transaction holds the database) and return the ids that still exist. A dataset commit
    and a file's deletion or erasure both take it, so they never interleave."""
    q = select(FileRow.id).where(FileRow.id.in_(file_ids)).with_for_update()
    return set(s.scalars(q))


def dataset_splits(store: BlobStore, dataset_id: str) -> list[str]:
    """The splits a prepared dataset has (the job runner fetches each one)."""
    return [name for name in SPLITS if store.exists(dataset_key(dataset_id, name))]


def dataset_split(store: BlobStore, tenant: str, dataset_id: str, split: str) -> Iterator[bytes]:
    """A prepared split as JSON Lines, in chunks (a split may be most of a 1 GiB upload)."""
    if split not in SPLITS:
        raise NotFound(f"no split {split!r}", param="split")
    key = dataset_key(dataset_id, split)
    if split == "test" and not store.exists(key):
        return iter(())  # a dataset prepared before the test split existed
    return store.chunks(key, tenant=tenant)
