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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from services.training.data.dedup import DedupReport, dedup
from services.training.data.example import Example
from services.training.data.labels import LabelReport, label_report
from services.training.data.normalize import normalize_text
from services.training.data.readers import LineError, Source
from services.training.data.records import parse_upload
from services.training.data.split import split
from services.training.data.tokenize import LengthReport, length_report
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


def prepare(
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
) -> Prepared:
    """Prepare an upload (bytes, or a file read line by line; optionally validation and test
    uploads) for ``task``."""
    _check_arguments(task, max_len, validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction >= 1:
        raise InvalidRequest(
            "validation_fraction + test_fraction must leave training examples",
            param="test_fraction",
        )
    fmt, examples = _parse(data, filename, mapping, task, "training_file", max_errors)
    held: list[Example] = []
    if validation is not None:
        name = validation_filename or filename
        held = _parse(validation, name, mapping, task, "validation_file", max_errors)[1]
    tested: list[Example] = []
    if test is not None:
        name = test_filename or filename
        tested = _parse(test, name, mapping, task, "test_file", max_errors)[1]
    rows_in = len(examples) + len(held) + len(tested)

    pii: Counter[str] = Counter()

    def scrub(text: str) -> str:
        clean, counts = redact(text)
        pii.update(counts)
        return clean

    examples = [ex.map_text(scrub) for ex in examples]
    held = [ex.map_text(scrub) for ex in held]
    tested = [ex.map_text(scrub) for ex in tested]

    # Validation and test rows are deduplicated after (and against) the training rows, test
    # last: no example is in two sets, and nothing trained on is scored.
    kept, dedup_report = dedup(examples + held + tested)
    from_held, from_test = {id(ex) for ex in held}, {id(ex) for ex in tested}
    train = [ex for ex in kept if id(ex) not in from_held and id(ex) not in from_test]
    if test is None:
        # its own seed stream, so the test set does not move when validation does
        train, test_set = split(train, test_fraction, seed + 7_919)
    else:
        test_set = [ex for ex in kept if id(ex) in from_test]
    if validation is None:
        train, val = split(train, validation_fraction, seed)
    else:
        val = [ex for ex in kept if id(ex) in from_held]
    split_report = SplitReport(
        train=len(train),
        validation=len(val),
        source="split" if validation is None else "upload",
        validation_fraction=validation_fraction if validation is None else None,
        test=len(test_set),
        test_source="split" if test is None else "upload",
        test_fraction=test_fraction if test is None else None,
    )

    report = PrepReport(
        format=fmt,
        task=task,
        rows_in=rows_in,
        rows_out=len(train) + len(val) + len(test_set),
        pii_redacted=dict(sorted(pii.items())),
        dedup=dedup_report,
        labels=label_report(train, val) if task in LABEL_TASKS else None,
        lengths=length_report(train + val + test_set, tokenizer, max_len),
        split=split_report,
        seed=seed,
    )
    return Prepared(train, val, report, test_set)


def _check_arguments(task: str, max_len: int, validation_fraction: float) -> None:
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}", param="task")
    if max_len < 1:
        raise InvalidRequest(f"max_len must be positive, got {max_len}", param="max_len")
    _check_fraction("validation_fraction", validation_fraction)


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise InvalidRequest(f"{name} must be in [0, 1), got {value}", param=name)


def _parse(
    data: Source,
    filename: str,
    mapping: Mapping[str, str] | None,
    task: str,
    param: str,
    max_errors: int,
) -> tuple[str, list[Example]]:
    """Parse and normalize one upload; raise ``InvalidRequest`` listing its first errors."""
    parsed = parse_upload(data, filename, mapping, max_errors=max_errors)
    _raise_errors(parsed.errors, filename, param, max_errors)
    examples = [ex.map_text(normalize_text) for ex in parsed.examples]
    if task in LABEL_TASKS:
        examples = [_with_label(ex) for ex in examples]
    empty = [
        LineError(ex.line, name, "is empty after normalization")
        for ex in examples
        for name in _empty_fields(ex)
    ]
    _raise_errors(empty[:max_errors], filename, param, max_errors)
    return parsed.format, examples


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
