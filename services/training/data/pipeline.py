"""The preparation pipeline: upload bytes → prepared train/validation/test examples + a report.

parse → normalize → redact PII → dedup → split (test and validation drawn deterministically
from the training upload unless uploaded: the test set first, so adding a validation upload
never changes it) → label report
(classification, sentiment) → length report. Invalid uploads raise ``InvalidRequest`` with
code ``invalid_training_file`` and the first line-numbered errors in the message.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from services.training.data.columns import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALIDATION,
    KeptColumns,
    assign_splits,
    label_report_of,
    length_report_of,
)
from services.training.data.dedup import Deduper, DedupReport
from services.training.data.example import Example
from services.training.data.labels import LabelReport
from services.training.data.normalize import normalize_text
from services.training.data.readers import ErrorSink, LineError, Source
from services.training.data.records import stream_upload
from services.training.data.spill import FileSpill, ListSpill, RowSpill
from services.training.data.split import rank64
from services.training.data.tokenize import (
    TOKENIZE_BATCH,
    LengthReport,
    count_tokens,
    example_texts,
)
from shared.errors import InvalidRequest
from shared.pii import redact

TASKS = ("classification", "sentiment", "translation", "generation")
LABEL_TASKS = frozenset({"classification", "sentiment"})
INVALID_FILE = "invalid_training_file"


class SplitReport(BaseModel):
    """Sizes of the three sets; ``source``/``test_source`` say whether validation and test
    were split off the training upload or uploaded. Sweeps, pruning and ``auto_promote``
    decide on validation; the job's reported base and tuned metrics are on test."""

    model_config = ConfigDict(frozen=True)

    train: int
    validation: int
    source: Literal["split", "upload"]
    validation_fraction: float | None = None
    test: int = 0
    test_source: Literal["split", "upload"] = "split"
    test_fraction: float | None = None


class PrepReport(BaseModel):
    """What preparation did, for the dataset version and the user (JSON-serializable)."""

    model_config = ConfigDict(frozen=True)

    format: str
    task: str
    rows_in: int
    rows_out: int
    errors: list[str] = []
    pii_redacted: dict[str, int]
    dedup: DedupReport
    labels: LabelReport | None = None
    lengths: LengthReport
    split: SplitReport
    seed: int


@dataclass(frozen=True, slots=True)
class Prepared:
    """The prepared dataset and its report."""

    train: list[Example]
    validation: list[Example]
    report: PrepReport
    test: list[Example] = field(default_factory=list)


class SplitSink(Protocol):
    """Receives each prepared example with its split (``train``, ``validation``, ``test``),
    in order within each split."""

    def write(self, split: str, example: Example) -> None: ...


class _Lists:
    def __init__(self) -> None:
        self.splits: dict[str, list[Example]] = {name: [] for name in SPLIT_NAMES}

    def write(self, split: str, example: Example) -> None:
        self.splits[split].append(example)


def prepare(data: Source, filename: str, **options: Any) -> Prepared:
    """:func:`prepare_stream` (same keyword options, ``tokenizer`` and ``max_len`` required)
    with the splits returned as lists (held in memory: small uploads and tests; the service
    writes them out as they come)."""
    lists = _Lists()
    report = prepare_stream(data, filename, sink=lists, **options)
    got = lists.splits
    return Prepared(got["train"], got["validation"], report, got["test"])


def prepare_stream(
    data: Source,
    filename: str,
    *,
    mapping: Mapping[str, str] | None = None,
    task: str = "generation",
    tokenizer: Any,
    max_len: int,
    validation: Source | None = None,
    validation_filename: str | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    max_errors: int = 10,
    test: Source | None = None,
    test_filename: str | None = None,
    test_fraction: float = 0.0,
    sink: SplitSink | None = None,
    spill_dir: Path | None = None,
) -> PrepReport:
    """Prepare an upload (bytes, a file or a stored blob, read line by line; optionally
    validation and test uploads) for ``task`` in one streamed pass, keeping per example only
    fixed-size columns (``columns.KeptColumns``) and 64-bit dedup digests. With a ``sink``,
    the kept examples are spilled (an encrypted temp file in ``spill_dir``; in memory when
    it is None) and written to it once their splits are known; without one, only the report
    is made (the upload check)."""
    _check_arguments(task, max_len, validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction >= 1:
        raise InvalidRequest(
            "validation_fraction + test_fraction must leave training examples",
            param="test_fraction",
        )
    spill: RowSpill | None = None
    if sink is not None:
        spill = ListSpill() if spill_dir is None else FileSpill(spill_dir)
    try:
        reader = _Reader(
            task,
            tokenizer,
            spill,
            seed=seed,
            rank_test=test is None and test_fraction > 0,
            rank_validation=validation is None and validation_fraction > 0,
        )
        fmt = reader.read(data, filename, mapping, TRAIN, "training_file", max_errors)
        if validation is not None:
            name = validation_filename or filename
            reader.read(validation, name, mapping, VALIDATION, "validation_file", max_errors)
        if test is not None:
            name = test_filename or filename
            reader.read(test, name, mapping, TEST, "test_file", max_errors)
        reader.count_tokens()
        kept, dedup_report = reader.kept, reader.deduper.report()
        reader.deduper = Deduper()  # its tables go before the split's arrays are made
        split = assign_splits(
            kept,
            test_fraction=test_fraction if test is None else None,
            validation_fraction=validation_fraction if validation is None else None,
        )
        sizes = np.bincount(split, minlength=3)
        report = PrepReport(
            format=fmt,
            task=task,
            rows_in=reader.rows_in,
            rows_out=len(kept),
            pii_redacted=dict(sorted(reader.pii.items())),
            dedup=dedup_report,
            labels=label_report_of(kept, split) if task in LABEL_TASKS else None,
            lengths=length_report_of(kept, split, max_len),
            split=SplitReport(
                train=int(sizes[TRAIN]),
                validation=int(sizes[VALIDATION]),
                source="split" if validation is None else "upload",
                validation_fraction=validation_fraction if validation is None else None,
                test=int(sizes[TEST]),
                test_source="split" if test is None else "upload",
                test_fraction=test_fraction if test is None else None,
            ),
            seed=seed,
        )
        if sink is not None and spill is not None:
            for i, example in enumerate(spill):
                sink.write(SPLIT_NAMES[split[i]], example)
        return report
    finally:
        if spill is not None:
            spill.close()


class _Reader:
    """Pass one: parse → normalize → check → redact PII → dedup → keep (columns + spill),
    the validation and test uploads after (and deduplicated against) the training rows,
    test last: no example is in two sets, and nothing trained on is scored."""

    def __init__(
        self,
        task: str,
        tokenizer: Any,
        spill: RowSpill | None,
        *,
        seed: int,
        rank_test: bool,
        rank_validation: bool,
    ) -> None:
        self.task, self.tokenizer, self.spill = task, tokenizer, spill
        # the test split has its own seed stream, so it does not move when validation does
        self.seeds = (seed + 7_919 if rank_test else None, seed if rank_validation else None)
        self.kept = KeptColumns()
        self.deduper = Deduper()
        self.pii: Counter[str] = Counter()
        self.rows_in = 0
        self._texts: list[list[str]] = []

    def read(
        self,
        data: Source,
        filename: str,
        mapping: Mapping[str, str] | None,
        source: int,
        param: str,
        max_errors: int,
    ) -> str:
        """Read one upload; raise ``InvalidRequest`` listing its first errors (parse errors
        first, then fields empty after normalization). Returns its format."""
        errors = ErrorSink(max_errors)
        stream = stream_upload(data, filename, mapping, errors)
        empty: list[LineError] = []
        for example in stream.examples:
            self.rows_in += 1
            example = example.map_text(normalize_text)
            if self.task in LABEL_TASKS:
                example = _with_label(example)
            if len(empty) < max_errors:
                empty += (
                    LineError(example.line, name, "is empty after normalization")
                    for name in _empty_fields(example)
                )
            if not errors.items and not empty:  # past the first error only errors matter
                self._keep(example, source)
        _raise_errors(errors.items, filename, param, max_errors)
        _raise_errors(empty[:max_errors], filename, param, max_errors)
        return stream.format

    def _keep(self, example: Example, source: int) -> None:
        example = example.map_text(self._scrub)
        if not self.deduper.keep(example):
            return
        test_seed, validation_seed = self.seeds
        self.kept.add(
            source,
            example.label,
            example.line,
            (
                None if test_seed is None else _train_rank(example, source, test_seed),
                None if validation_seed is None else _train_rank(example, source, validation_seed),
            ),
        )
        if self.spill is not None:
            self.spill.append(example)
        self._texts.append(example_texts(example))
        if len(self._texts) >= TOKENIZE_BATCH:
            self.count_tokens()

    def _scrub(self, text: str) -> str:
        clean, counts = redact(text)
        self.pii.update(counts)
        return clean

    def count_tokens(self) -> None:
        """Token counts of the examples kept since the last call (texts then dropped)."""
        flat = count_tokens(self.tokenizer, [t for texts in self._texts for t in texts])
        pos = 0
        for texts in self._texts:
            self.kept.length.append(sum(flat[pos : pos + len(texts)]))
            pos += len(texts)
        self._texts = []


def _train_rank(example: Example, source: int, seed: int) -> int:
    return rank64(example, seed) if source == TRAIN else 0  # only training rows are drawn


def _check_arguments(task: str, max_len: int, validation_fraction: float) -> None:
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}", param="task")
    if max_len < 1:
        raise InvalidRequest(f"max_len must be positive, got {max_len}", param="max_len")
    _check_fraction("validation_fraction", validation_fraction)


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidRequest(f"{name} must be in [0, 1), got {value}", param=name)


def _with_label(example: Example) -> Example:
    if example.label is not None:
        return example
    if example.messages is not None:
        return Example.from_messages(example.line, example.messages, example.completion)
    return Example(example.line, example.prompt, example.completion, example.completion)


def _empty_fields(example: Example) -> Iterable[str]:
    if example.messages is not None:
        for i, message in enumerate(example.messages):
            if not message["content"]:
                yield f"messages[{i}].content"
    else:
        yield from (n for n in ("prompt", "completion") if not getattr(example, n))
    if example.label == "":
        yield "label"


def _raise_errors(errors: list[LineError], filename: str, param: str, max_errors: int) -> None:
    if not errors:
        return
    if all(e.line == 0 and e.field.startswith("mapping") for e in errors):
        listed = "; ".join(str(e) for e in errors)
        raise InvalidRequest(
            f"invalid field mapping: {listed}", param="mapping", code="invalid_mapping"
        )
    stopped = f" (stopped after the first {max_errors})" if len(errors) >= max_errors else ""
    listed = "; ".join(str(e) for e in errors)
    raise InvalidRequest(
        f"{filename}: {len(errors)} error{'s' if len(errors) != 1 else ''}{stopped}: {listed}",
        param=param,
        code=INVALID_FILE,
    )


def to_jsonl(examples: Iterable[Example]) -> bytes:
    """The prepared dataset as JSON Lines: ``{"messages": [...]}`` for chat examples, else
    ``{"prompt", "completion"}``; ``"label"`` is added when the example has one."""
    lines = []
    for ex in examples:
        record: dict[str, Any]
        if ex.messages is not None:
            record = {"messages": ex.messages}
        else:
            record = {"prompt": ex.prompt, "completion": ex.completion}
        if ex.label is not None:
            record["label"] = ex.label
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")
