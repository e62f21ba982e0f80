"""The preparation pipeline: upload bytes → prepared train/validation examples + a report.

parse → normalize → redact PII → dedup → split (or the validation upload) → label report
(classification, sentiment) → length report. Invalid uploads raise ``InvalidRequest`` with
code ``invalid_training_file`` and the first line-numbered errors in the message.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from services.training.data.dedup import DedupReport, dedup
from services.training.data.example import Example
from services.training.data.labels import LabelReport, label_report
from services.training.data.normalize import normalize_text
from services.training.data.readers import LineError
from services.training.data.records import parse_upload
from services.training.data.split import split
from services.training.data.tokenize import LengthReport, length_report
from shared.errors import InvalidRequest
from shared.pii import redact

TASKS = ("classification", "sentiment", "translation", "generation")
LABEL_TASKS = frozenset({"classification", "sentiment"})
INVALID_FILE = "invalid_training_file"


class SplitReport(BaseModel):
    """Sizes of the two sets; ``source`` says whether validation was split off or uploaded."""

    model_config = ConfigDict(frozen=True)

    train: int
    validation: int
    source: Literal["split", "upload"]
    validation_fraction: float | None = None


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


def prepare(
    data: bytes,
    filename: str,
    *,
    mapping: Mapping[str, str] | None = None,
    task: str = "generation",
    tokenizer: Any,
    max_len: int,
    validation: bytes | None = None,
    validation_filename: str | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    max_errors: int = 10,
) -> Prepared:
    """Prepare an upload (and optionally a validation upload) for fine-tuning on ``task``."""
    _check_arguments(task, max_len, validation_fraction)
    fmt, examples = _parse(data, filename, mapping, task, "training_file", max_errors)
    held: list[Example] = []
    if validation is not None:
        name = validation_filename or filename
        held = _parse(validation, name, mapping, task, "validation_file", max_errors)[1]
    rows_in = len(examples) + len(held)

    pii: Counter[str] = Counter()

    def scrub(text: str) -> str:
        clean, counts = redact(text)
        pii.update(counts)
        return clean

    examples = [ex.map_text(scrub) for ex in examples]
    held = [ex.map_text(scrub) for ex in held]

    # Validation rows are deduplicated after (and against) the training rows: no leakage.
    kept, dedup_report = dedup(examples + held)
    from_train = {id(ex) for ex in examples}
    if validation is None:
        train, val = split(kept, validation_fraction, seed)
        split_report = SplitReport(
            train=len(train),
            validation=len(val),
            source="split",
            validation_fraction=validation_fraction,
        )
    else:
        train = [ex for ex in kept if id(ex) in from_train]
        val = [ex for ex in kept if id(ex) not in from_train]
        split_report = SplitReport(train=len(train), validation=len(val), source="upload")

    report = PrepReport(
        format=fmt,
        task=task,
        rows_in=rows_in,
        rows_out=len(train) + len(val),
        pii_redacted=dict(sorted(pii.items())),
        dedup=dedup_report,
        labels=label_report(train, val) if task in LABEL_TASKS else None,
        lengths=length_report(train + val, tokenizer, max_len),
        split=split_report,
        seed=seed,
    )
    return Prepared(train, val, report)


def _check_arguments(task: str, max_len: int, validation_fraction: float) -> None:
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {task!r}", param="task")
    if max_len < 1:
        raise InvalidRequest(f"max_len must be positive, got {max_len}", param="max_len")
    if not 0 <= validation_fraction < 1:
        raise InvalidRequest(
            f"validation_fraction must be in [0, 1), got {validation_fraction}",
            param="validation_fraction",
        )


def _parse(
    data: bytes,
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
