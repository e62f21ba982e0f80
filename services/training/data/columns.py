"""What preparation remembers of each kept example: fixed-size columns, never the text.

Pass one (``pipeline.prepare_stream``) appends a row per kept example: where it came from
(training, validation or test upload), its label (as a number), its line, its token count and
the split ranks it needs: 13 to 29 bytes a row. From these alone the split is decided
(:func:`services.training.data.split.choose`, the same rule as ``split``) and the split,
label and length reports are computed; the examples themselves are read back from the spill
only when a caller wants the splits written.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.training.data.labels import LabelReport, label_report_of_counts
from services.training.data.split import choose
from services.training.data.tokenize import MAX_TRUNCATED_LINES, LengthReport

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")


@dataclass(slots=True)
class KeptColumns:
    """One entry per kept example, in the order they were kept."""

    source: array[int] = field(default_factory=lambda: array("B"))
    label: array[int] = field(default_factory=lambda: array("I"))
    line: array[int] = field(default_factory=lambda: array("I"))
    length: array[int] = field(default_factory=lambda: array("I"))
    rank_test: array[int] = field(default_factory=lambda: array("Q"))
    rank_validation: array[int] = field(default_factory=lambda: array("Q"))
    labels: dict[str | None, int] = field(default_factory=lambda: {None: 0})

    def __len__(self) -> int:
        return len(self.source)

    def add(
        self, source: int, label: str | None, line: int, ranks: tuple[int | None, int | None]
    ) -> None:
        """One kept row; a rank of None is not kept (that split is uploaded or empty: the
        rank column then stays empty and is never read)."""
        self.source.append(source)
        self.label.append(self.labels.setdefault(label, len(self.labels)))
        self.line.append(line)
        if ranks[0] is not None:
            self.rank_test.append(ranks[0])
        if ranks[1] is not None:
            self.rank_validation.append(ranks[1])


def _np(column: array[int], dtype: type) -> npt.NDArray[Any]:
    return np.frombuffer(column, dtype=dtype) if len(column) else np.zeros(0, dtype=dtype)


def assign_splits(
    kept: KeptColumns,
    *,
    test_fraction: float | None,
    validation_fraction: float | None,
) -> npt.NDArray[np.uint8]:
    """Each kept row's split (``TRAIN``/``VALIDATION``/``TEST``). A fraction of None means
    that set was uploaded: its rows are the upload's. Test is drawn first, then validation
    from what is left, as ``pipeline.prepare`` always did."""
    source = _np(kept.source, np.uint8)
    labels = _np(kept.label, np.uint32)
    from_train = source == TRAIN
    if test_fraction is None:
        test = source == TEST
    else:
        test = choose(labels, _np(kept.rank_test, np.uint64), from_train, test_fraction)
    if validation_fraction is None:
        validation = source == VALIDATION
    else:
        eligible = from_train & ~test
        ranks = _np(kept.rank_validation, np.uint64)
        validation = choose(labels, ranks, eligible, validation_fraction)
    split = np.full(len(source), TRAIN, dtype=np.uint8)
    split[validation] = VALIDATION
    split[test] = TEST
    return split


def label_report_of(kept: KeptColumns, split: npt.NDArray[np.uint8]) -> LabelReport:
    names = {i: name for name, i in kept.labels.items()}
    labels = _np(kept.label, np.uint32)

    def counts(which: int) -> Counter[str]:
        found = np.bincount(labels[split == which], minlength=len(names))
        out: Counter[str] = Counter()
        for i, name in names.items():
            if name is not None and found[i]:
                out[name] = int(found[i])
        return out

    return label_report_of_counts(counts(TRAIN), counts(VALIDATION))


def length_report_of(kept: KeptColumns, split: npt.NDArray[np.uint8], max_len: int) -> LengthReport:
    """``tokenize.length_report`` of train + validation + test, from the counted lengths."""
    lengths = _np(kept.length, np.uint32)
    if not len(lengths):
        return LengthReport(max_len=max_len)
    ordered = np.sort(lengths)
    over = lengths > max_len
    lines = _np(kept.line, np.uint32)
    named = [
        int(x)
        for s in (TRAIN, VALIDATION, TEST)
        for x in lines[over & (split == s)][:MAX_TRUNCATED_LINES]
    ]

    def percentile(q: float) -> int:  # nearest rank, as tokenize._percentile
        return int(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)])

    return LengthReport(
        count=len(lengths),
        tokens_total=int(lengths.sum()),
        p50=percentile(50),
        p95=percentile(95),
        max=int(ordered[-1]),
        truncated=int(over.sum()),
        max_len=max_len,
        truncated_lines=named[:MAX_TRUNCATED_LINES],
    )
