"""Raw CRM/ERP/CMS exports (CSV, JSON array, JSON Lines) plus a field mapping → examples.

The mapping sends source fields (CSV columns, JSON keys or dotted paths such as
``Account.Name``) to targets: ``prompt`` or ``text`` (the input), ``completion`` or ``target``
(the output), ``label``. Several sources of one target are joined with a newline in mapping
order, empty ones skipped. Classification/sentiment map text → prompt and label → completion;
translation maps text → prompt and target → completion.

The reserved entry ``"$system": "<instructions>"`` (a literal text, not a source field) makes
every record a chat conversation: that system message, the prompt as the user's turn, the
completion as the assistant's. Such data trains through the base model's chat template and
is served by ``/v1/chat/completions``; without it, records are prompt/completion pairs for
``/v1/completions``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from services.training.data.example import Example
from services.training.data.readers import (
    ErrorSink,
    csv_lines,
    csv_rows,
    json_type,
    sniff_delimiter,
    sniff_sample,
)

TARGETS = ("prompt", "text", "completion", "target", "label")
SYSTEM_KEY = "$system"
MAX_SYSTEM_CHARS = 4000
_MISSING = object()


def _plan(mapping: Mapping[str, str] | Any, errors: ErrorSink) -> dict[str, list[str]] | None:
    """Validate a mapping; return target → source fields (mapping order)."""
    if not isinstance(mapping, Mapping) or not mapping:
        errors.add(0, "mapping", "must be a non-empty object of source field → target")
        return None
    plan: dict[str, list[str]] = {}
    for source, target in mapping.items():
        if source == SYSTEM_KEY:
            if not isinstance(target, str) or not target.strip():
                errors.add(0, f"mapping.{SYSTEM_KEY}", "must be a non-empty system message")
            elif len(target) > MAX_SYSTEM_CHARS:
                errors.add(
                    0, f"mapping.{SYSTEM_KEY}", f"is longer than {MAX_SYSTEM_CHARS} characters"
                )
            else:
                plan[SYSTEM_KEY] = [target.strip()]
        elif not isinstance(source, str) or not source.strip():
            errors.add(0, "mapping", f"source field names must be non-empty strings: {source!r}")
        elif target not in TARGETS:
            errors.add(
                0,
                f"mapping.{source}",
                f"target must be one of {', '.join(TARGETS)}, got {target!r}",
            )
        else:
            plan.setdefault(target, []).append(source)
    for a, b in (("prompt", "text"), ("completion", "target")):
        if a in plan and b in plan:
            errors.add(0, "mapping", f"map fields to either {a!r} or {b!r}, not both")
    if not ({"prompt", "text"} & plan.keys()):
        errors.add(0, "mapping", "no field is mapped to 'prompt' or 'text'")
    if not ({"completion", "target", "label"} & plan.keys()):
        errors.add(0, "mapping", "no field is mapped to 'completion', 'target' or 'label'")
    return None if errors.items else plan


def _source_fields(plan: dict[str, list[str]]) -> list[str]:
    """Every mapped source field, in mapping order (the literal system message is none)."""
    return [s for target, group in plan.items() if target != SYSTEM_KEY for s in group]


def _mapped_example(
    line: int, get: Callable[[str], Any], plan: dict[str, list[str]], errors: ErrorSink
) -> Example | None:
    problems: list[tuple[str, str]] = []
    values: dict[str, str] = {}
    for target, sources in plan.items():
        if target == SYSTEM_KEY:
            continue
        parts: list[str] = []
        for source in sources:
            value = get(source)
            if isinstance(value, dict | list):
                problems.append((source, f"expected text, got {json_type(value)}"))
            elif value is not None and value is not _MISSING:
                text = str(value).lower() if isinstance(value, bool) else str(value)
                if text.strip():
                    parts.append(text)
        if parts:
            values[target] = "\n".join(parts)
        else:
            problems.append(("+".join(sources), f"empty {target}"))
    if not errors.accept(line, problems):
        return None
    label = values.get("label")
    completion = values.get("completion") or values.get("target") or values["label"]
    prompt = values.get("prompt") or values["text"]
    if SYSTEM_KEY in plan:
        messages = [
            {"role": "system", "content": plan[SYSTEM_KEY][0]},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return Example.from_messages(line, messages, label)
    return Example(line, prompt, completion, label)


def examples_from_records(
    values: list[tuple[int, Any]], mapping: Mapping[str, str], errors: ErrorSink
) -> list[Example]:
    """Map ``(line, JSON value)`` records to examples; a mapped field absent from every record
    is reported (by name) before any per-record error."""
    plan = _plan(mapping, errors)
    if plan is None or errors.full:
        return []
    records = []
    for line, obj in values:
        if isinstance(obj, dict):
            records.append((line, obj))
        else:
            errors.add(line, "json", f"expected a JSON object, got {json_type(obj)}")
    for source in _source_fields(plan):
        if records and all(_lookup(obj, source) is _MISSING for _, obj in records):
            errors.add(0, source, f"mapped field {source!r} is not in any record")
    if errors.items:
        return []
    examples = []
    for line, obj in records:
        example = _mapped_example(line, partial(_lookup, obj), plan, errors)
        if example is not None:
            examples.append(example)
        if errors.full:
            break
    return examples


def _lookup(obj: dict[str, Any], path: str) -> Any:
    """``obj[path]``, or a dotted path through nested objects (``Account.Name``)."""
    if path in obj:
        return obj[path]
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def examples_from_csv(
    text: str, filename: str, mapping: Mapping[str, str] | None, errors: ErrorSink
) -> list[Example]:
    """Map CSV rows to examples. The delimiter is sniffed; without a mapping, columns named
    after a target (``prompt``, ``completion``, ...) map to themselves."""
    return list(csv_examples(lambda: iter(text.split("\n")), filename, mapping, errors))


def csv_examples(
    lines: Callable[[], Iterable[str]],
    filename: str,
    mapping: Mapping[str, str] | None,
    errors: ErrorSink,
) -> Iterator[Example]:
    """:func:`examples_from_csv` as a stream over the text's lines (``lines()`` gives them
    anew: once for the delimiter's sample, once for the rows)."""
    preferred = "\t" if filename.lower().endswith(".tsv") else ","
    sample, cut = sniff_sample(lines())
    delimiter = sniff_delimiter(sample, preferred, cut=cut)
    rows = csv_rows(csv_lines(lines()), errors, delimiter=delimiter)
    first = next(rows, None)
    if first is None:
        return
    header_line, header = first
    header = [name.strip() for name in header]
    if mapping is None:
        mapping = {name: name.lower() for name in header if name.lower() in TARGETS}
        if not mapping:
            errors.add(
                header_line,
                "mapping",
                f"a CSV upload needs a field mapping (columns: {_names(header)})",
            )
            return
    plan = _plan(mapping, errors)
    if plan is None:
        return
    index = _column_index(header, _source_fields(plan), header_line, errors)
    if index is None:
        return
    for line, row in rows:
        if len(row) != len(header) and (
            len(row) < len(header) or any(c.strip() for c in row[len(header) :])
        ):
            errors.add(line, "row", f"expected {len(header)} columns, got {len(row)}")
            continue
        cells = {source: row[i] for source, i in index.items()}
        example = _mapped_example(line, cells.__getitem__, plan, errors)
        if example is not None:
            yield example


def _column_index(
    header: list[str], sources: list[str], line: int, errors: ErrorSink
) -> dict[str, int] | None:
    folded = {name.casefold(): i for i, name in reversed(list(enumerate(header)))}
    index: dict[str, int] = {}
    for source in sources:
        if source in header:
            index[source] = header.index(source)
        elif source.strip().casefold() in folded:
            index[source] = folded[source.strip().casefold()]
        else:
            errors.add(
                line,
                source,
                f"mapped column {source!r} is not in the CSV header (columns: {_names(header)})",
            )
    return None if errors.items else index


def _names(header: list[str], limit: int = 20) -> str:
    more = f", ... ({len(header) - limit} more)" if len(header) > limit else ""
    return ", ".join(header[:limit]) + more
