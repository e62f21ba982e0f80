"""Prepared datasets on their way to Ray Train workers: through Ray's object store, no paths.

The job runner (the Ray job's driver) reads every split of a job's dataset from the
training service over HTTP (per-job token) and hands the rows to :func:`run_training` as
``TrainSpec.datasets = {split: rows}``. :func:`put_splits` stores each split once in the
object store; the train loop's config carries ``{"datasets": {split: ObjectRef}}`` and a
worker on any node reads its split with :func:`split_rows` (Ray pulls the object from the
node that holds it and re-pulls it after a worker group restart). Nothing is written to a
directory one node sees and another does not.

Generic over split names: whatever splits the dataset has travel the same way; the train
loop asks for ``train`` and ``validation`` by name, other code may ask for others
(``test``). Values may also be plain row lists (a loop run without Ray, e.g. a benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = dict[str, Any]


def _is_ref(value: object) -> bool:
    import ray

    return isinstance(value, ray.ObjectRef)


def put_splits(datasets: Mapping[str, Any]) -> dict[str, Any]:
    """``{split: ObjectRef}``: each row list stored once (refs already stored pass through)."""
    import ray

    return {name: rows if _is_ref(rows) else ray.put(list(rows)) for name, rows in datasets.items()}


def split_rows(config: Mapping[str, Any], name: str, limit: int | None = None) -> list[Row]:
    """The rows of split ``name`` from a train-loop config (``[]`` when it has none)."""
    value = (config.get("datasets") or {}).get(name)
    if value is None:
        return []
    if _is_ref(value):
        import ray

        value = ray.get(value)
    rows = list(value)
    return rows[:limit] if limit is not None else rows


def rows_of(datasets: Mapping[str, Any], name: str) -> list[Row]:
    """Driver side: the rows of ``name`` in a ``TrainSpec.datasets`` mapping (refs fetched)."""
    return split_rows({"datasets": datasets}, name)


def count_rows(datasets: Mapping[str, Sequence[Row] | Any], name: str) -> int:
    """How many rows split ``name`` has (0 when absent)."""
    value = datasets.get(name)
    if value is None:
        return 0
    return len(rows_of(datasets, name)) if _is_ref(value) else len(value)
