"""Parse an upload into ``Example`` records, with line-numbered errors.

Accepted formats:

* ``chat``: JSON Lines of ``{"messages": [{"role", "content"}, ...]}``;
* ``prompt_completion``: JSON Lines of ``{"prompt", "completion"}`` (optional ``"label"``);
* raw CRM/ERP/CMS exports (``csv``, ``json`` array of objects, ``jsonl``) plus a field
  ``mapping`` from source field to one of ``prompt``, ``completion``, ``label``, ``text``,
  ``target``. Several sources mapped to one target are joined with a newline in mapping order.

Classification and sentiment exports map ``text`` (→ prompt) and ``label`` (→ completion and
label); translation maps ``text`` (→ prompt) and ``target`` (→ completion).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.training.data.example import Example, content_key
from services.training.data.exports import TARGETS, csv_examples, examples_from_records
from services.training.data.readers import (
    MAX_DEPTH,
    MAX_LINE_BYTES,
    ErrorSink,
    LineError,
    Source,
    decoded_lines,
    json_array,
    json_lines,
    json_type,
    scan_utf8,
    text_of,
)

__all__ = [
    "TARGETS",
    "Example",
    "LineError",
    "ParseResult",
    "ParseStream",
    "content_key",
    "parse_upload",
    "stream_upload",
]

ROLES = frozenset({"system", "user", "assistant"})
_MISSING = object()


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Examples parsed so far, the errors (at most ``max_errors``) and the detected format."""

    examples: list[Example]
    errors: list[LineError]
    format: str


class ParseStream:
    """An upload being parsed: ``examples`` yields each example as its lines are read (errors
    go to the sink given); ``format`` is final once ``examples`` is exhausted."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self.examples: Iterator[Example] = iter(())


def stream_upload(
    data: Source,
    filename: str,
    mapping: Mapping[str, str] | None,
    errors: ErrorSink,
    *,
    max_depth: int = MAX_DEPTH,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ParseStream:
    """Parse ``data`` (bytes, a file or a stored blob, read line by line; named ``filename``)
    as a stream of examples, reporting into ``errors`` (its readers stop once it is full).

    Every line is checked for UTF-8 and length first (one streamed pass). CSV and JSON
    Lines are then parsed a record at a time; a JSON array, or JSON Lines with a mapping
    (a mapped field absent from every record is reported first), are read whole.
    Without a mapping, JSON uploads must be chat or prompt/completion records and a CSV must
    have columns named after the targets. With a mapping, the upload is a raw export.
    """
    start = scan_utf8(data, errors, max_line_bytes=max_line_bytes)
    kind = _kind(filename, start.first)
    stream = ParseStream(kind)
    if errors.items:
        return stream
    if not start.first:
        errors.add(0, "file", "the file is empty")
        return stream
    inner: Iterator[Example]
    if kind == "csv":
        stream.format = "csv"
        inner = csv_examples(lambda: decoded_lines(data), filename, mapping, errors)
    else:
        is_array = kind == "json" and start.first_json == "["
        values = (
            json_array(text_of(data), errors, max_depth=max_depth)
            if is_array
            else json_lines(decoded_lines(data), errors, max_depth=max_depth)
        )
        if mapping is None:
            stream.format = "chat"
            inner = _from_openai_records(values, errors, stream)
        else:
            stream.format = "json" if is_array else "jsonl"
            inner = iter(examples_from_records(list(values), mapping, errors))
    stream.examples = _none_means_error(inner, errors)
    return stream


def _none_means_error(examples: Iterator[Example], errors: ErrorSink) -> Iterator[Example]:
    seen = False
    for example in examples:
        seen = True
        yield example
    if not seen and not errors.items:
        errors.add(0, "file", "no examples found")


def parse_upload(
    data: Source,
    filename: str,
    mapping: Mapping[str, str] | None = None,
    *,
    max_errors: int = 10,
    max_depth: int = MAX_DEPTH,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ParseResult:
    """Parse ``data`` into a list of examples; stop after ``max_errors`` errors (the whole
    upload in memory: the pipeline streams with :func:`stream_upload`)."""
    errors = ErrorSink(max_errors)
    stream = stream_upload(
        data, filename, mapping, errors, max_depth=max_depth, max_line_bytes=max_line_bytes
    )
    examples = list(stream.examples)
    return ParseResult(examples, errors.items, stream.format)


def _kind(filename: str, first: str) -> str:
    """``csv``, ``jsonl`` (JSON Lines) or ``json`` (an array, or JSON Lines if not one)."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext in ("csv", "tsv"):
        return "csv"
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext == "json":
        return "json"
    return "json" if first in ("{", "[") else "csv"


# --- chat and prompt/completion JSON Lines -------------------------------------------------


def _from_openai_records(
    values: Iterable[tuple[int, Any]], errors: ErrorSink, stream: ParseStream
) -> Iterator[Example]:
    fmt: str | None = None
    first = 0
    for line, obj in values:
        if not isinstance(obj, dict):
            errors.add(line, "json", f"expected a JSON object, got {json_type(obj)}")
            continue
        kind = _record_format(obj)
        if fmt is None and kind is None:
            errors.add(line, "messages", "record has neither 'messages' nor 'prompt'/'completion'")
            continue
        if fmt is None:
            fmt, first = kind, line
            stream.format = kind or "chat"
        elif kind is not None and kind != fmt:
            where = "messages" if fmt == "chat" else "prompt"
            names = {"chat": "chat", "prompt_completion": "prompt/completion"}
            message = f"a {names[kind]} record in a {names[fmt]} file (format set by line {first})"
            errors.add(line, where, message)
            continue
        example = (_chat if fmt == "chat" else _prompt_completion)(line, obj, errors)
        if example is not None:
            yield example


def _record_format(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def _chat(line: int, obj: dict[str, Any], errors: ErrorSink) -> Example | None:
    problems: list[tuple[str, str]] = []
    messages = obj.get("messages", _MISSING)
    clean: list[dict[str, str]] = []
    if messages is _MISSING:
        problems.append(("messages", "missing (the file is in chat format)"))
    elif not isinstance(messages, list) or not messages:
        problems.append(("messages", "must be a non-empty array of messages"))
    else:
        for i, message in enumerate(messages):
            problems += _message_problems(f"messages[{i}]", message)
            if isinstance(message, dict):
                clean.append(
                    {"role": str(message.get("role")), "content": str(message.get("content"))}
                )
        if not problems and not any(m["role"] == "assistant" for m in clean):
            problems.append(("messages", "needs at least one assistant message"))
    label = _optional_label(obj, problems)
    if not errors.accept(line, problems):
        return None
    return Example.from_messages(line, clean, label)


def _message_problems(where: str, message: Any) -> list[tuple[str, str]]:
    if not isinstance(message, dict):
        return [(where, f"expected an object, got {json_type(message)}")]
    problems = []
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        problems.append(
            (f"{where}.role", f"must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        )
    if not isinstance(content, str):
        problems.append((f"{where}.content", f"must be a string, got {json_type(content)}"))
    elif not content.strip():
        problems.append((f"{where}.content", "is empty"))
    return problems


def _prompt_completion(line: int, obj: dict[str, Any], errors: ErrorSink) -> Example | None:
    problems: list[tuple[str, str]] = []
    texts: dict[str, str] = {}
    for name in ("prompt", "completion"):
        value = obj.get(name, _MISSING)
        if value is _MISSING:
            problems.append((name, "missing (the file is in prompt/completion format)"))
        elif not isinstance(value, str):
            problems.append((name, f"must be a string, got {json_type(value)}"))
        elif not value.strip():
            problems.append((name, "is empty"))
        else:
            texts[name] = value
    label = _optional_label(obj, problems)
    if not errors.accept(line, problems):
        return None
    return Example(line, texts["prompt"], texts["completion"], label)


def _optional_label(obj: dict[str, Any], problems: list[tuple[str, str]]) -> str | None:
    value = obj.get("label")
    if value is None:
        return None
    if isinstance(value, dict | list) or not str(value).strip():
        problems.append(("label", "must be a non-empty string"))
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)
