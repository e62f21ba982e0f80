"""Deterministic train/validation split.

Each example gets a rank from a hash of its content and the seed, so the split depends on
neither the order of the examples nor anything but the seed. With labels, the split is
stratified: every label with at least two examples puts at least one in validation.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

import numpy as np
import numpy.typing as npt

from services.training.data.example import Example, content_key


def _rank(example: Example, seed: int) -> bytes:
    data = f"{seed}\x00{example.label}\x00{content_key(example)}"
    return hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _validation_size(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, math.floor(n * fraction + 0.5)))


def split(
    examples: list[Example], validation_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split into ``(train, validation)``, each in input order.

    Without labels, ``round(n * validation_fraction)`` examples go to validation (at least one
    when the fraction is positive and n ≥ 2, never all). With labels, the same rule applies to
    each label on its own; a label seen once stays in training.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    groups: dict[str | None, list[int]] = defaultdict(list)
    stratified = any(ex.label is not None for ex in examples)
    for i, ex in enumerate(examples):
        groups[ex.label if stratified else None].append(i)
    chosen: set[int] = set()
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (_rank(examples[i], seed), i))
        chosen.update(ranked[: _validation_size(len(members), validation_fraction)])
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    validation = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, validation


def rank64(example: Example, seed: int) -> int:
    """The first 8 bytes of :func:`_rank` as an integer: ordering by ``(rank64, index)`` is
    ordering by ``(_rank, index)`` (but where 64-bit prefixes tie, about never)."""
    return int.from_bytes(_rank(example, seed)[:8], "big")


def choose(
    groups: npt.NDArray[np.uint32],
    ranks: npt.NDArray[np.uint64],
    eligible: npt.NDArray[np.bool_],
    fraction: float,
) -> npt.NDArray[np.bool_]:
    """:func:`split`'s validation choice over columns instead of examples: of the
    ``eligible`` rows, per group (label) the ``round(n * fraction)`` of smallest
    ``(rank, index)``. Returns the chosen rows as a mask the length of ``groups``."""
    chosen = np.zeros(len(groups), dtype=bool)
    rows = np.flatnonzero(eligible)
    if fraction <= 0 or not len(rows):
        return chosen
    order = rows[np.lexsort((rows, ranks[rows], groups[rows]))]
    ordered = groups[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for start, end in zip(starts, [*starts[1:], len(order)], strict=True):
        chosen[order[start : start + _validation_size(int(end - start), fraction)]] = True
    return chosen
