"""Low-level readers for uploads: bytes → text lines, JSON values and CSV rows, with line numbers.

Every reader reports problems into an ``ErrorSink`` (line-numbered ``LineError``s, capped) rather
than raising, so one pass over a bad file tells the user about several problems at once.

A source is bytes, a file, or anything with ``open_binary()`` (an encrypted stored blob); a
file or blob is read line by line, never whole: :func:`scan_utf8` checks every line first
(so encoding errors are reported as before, ahead of any parsing), then
:func:`decoded_lines` and :func:`csv_lines` stream the text to the parsers.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeAlias

MAX_DEPTH = 32
MAX_LINE_BYTES = 1_000_000
CSV_DELIMITERS = (",", ";", "\t", "|")

# A JSON string (possessive, so a 1 MB string costs one linear scan) or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.S)
_JSON_WS = re.compile(r"[ \t\n\r]*")
_CR_END = re.compile(r"(?<=\r)(?!\n)")  # after a lone CR: a line end for csv's newline=""
SNIFF_CHARS = 1 << 20


class BinarySource(Protocol):
    """A stored upload that is opened anew for each pass (e.g. a decrypting stream)."""

    def open_binary(self) -> BinaryIO: ...


Source: TypeAlias = "bytes | Path | BinarySource"


def open_source(data: Source) -> BinaryIO:
    if isinstance(data, bytes):
        return io.BytesIO(data)
    if isinstance(data, Path):
        return data.open("rb")
    return data.open_binary()


@dataclass(frozen=True, slots=True)
class LineError:
    """One problem in an upload. ``line`` is 1-based; 0 means the file as a whole."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line > 0 else ""
        return f"{where}{self.field}: {self.message}"


@dataclass(slots=True)
class ErrorSink:
    """Collects up to ``limit`` errors; readers stop early once it is ``full``."""

    limit: int = 10
    items: list[LineError] = field(default_factory=list)

    def add(self, line: int, field_name: str, message: str) -> None:
        if not self.full:
            self.items.append(LineError(line, field_name, message))

    def accept(self, line: int, problems: list[tuple[str, str]]) -> bool:
        """Report a record's ``(field, message)`` problems; True when it had none."""
        for field_name, message in problems:
            self.add(line, field_name, message)
        return not problems

    @property
    def full(self) -> bool:
        return len(self.items) >= max(1, self.limit)


def raw_lines(data: Source) -> Iterator[bytes]:
    """``data.split(b"\\n")``, also for a file, which is read line by line (never whole)."""
    if isinstance(data, bytes):
        yield from data.split(b"\n")
        return
    with open_source(data) as fh:
        last = b"\n"
        for last in fh:
            yield last.removesuffix(b"\n")
        if last.endswith(b"\n"):
            yield b""


@dataclass(frozen=True, slots=True)
class TextStart:
    """How the decoded text starts: its first character after ``str.lstrip()`` (empty when
    the text is blank) and after JSON's whitespace only."""

    first: str
    first_json: str


def scan_utf8(
    data: Source, errors: ErrorSink, *, max_line_bytes: int = MAX_LINE_BYTES
) -> TextStart:
    """Check ``data`` line by line (over-long lines and invalid bytes are reported with their
    line and byte offset; a leading BOM is dropped), keeping nothing of the text but how it
    starts."""
    first = first_json = ""
    offset = 0
    for number, raw in enumerate(raw_lines(data), start=1):
        if errors.full:
            break
        if len(raw) > max_line_bytes:
            errors.add(
                number,
                "line",
                f"line is {len(raw):,} bytes, longer than the {max_line_bytes:,}-byte limit",
            )
        else:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.add(
                    number,
                    "encoding",
                    f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte offset "
                    f"{offset + exc.start} of the file (byte {exc.start + 1} of the line)",
                )
            else:
                if not (first and first_json):
                    line = line.removeprefix("\ufeff") if number == 1 else line
                    first = first or line.lstrip()[:1]
                    first_json = first_json or line.lstrip(" \t\r\n")[:1]
        offset += len(raw) + 1
    return TextStart(first, first_json)


def decoded_lines(data: Source) -> Iterator[str]:
    """``text.split("\\n")`` of the decoded text (BOM dropped), streamed; only after
    :func:`scan_utf8` found no error."""
    for number, raw in enumerate(raw_lines(data), start=1):
        line = raw.decode("utf-8")
        yield line.removeprefix("\ufeff") if number == 1 else line


def text_of(data: Source) -> str:
    """The whole decoded text (formats that cannot be parsed a line at a time)."""
    return "\n".join(decoded_lines(data))


def csv_lines(lines: Iterable[str]) -> Iterator[str]:
    """The lines ``io.StringIO("\\n".join(lines), newline="")`` yields (a lone CR ends a
    line too), without joining them."""
    it = iter(lines)
    prev = next(it, None)
    if prev is None:
        return
    for line in it:
        yield from _cr_split(prev + "\n")
        prev = line
    if prev:
        yield from _cr_split(prev)


def _cr_split(text: str) -> list[str]:
    return [p for p in _CR_END.split(text) if p] if "\r" in text else [text]


def sniff_sample(lines: Iterable[str]) -> tuple[str, bool]:
    """The first ``SNIFF_CHARS`` characters of ``"\\n".join(lines)`` and whether there is more."""
    parts: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        piece = line if i == 0 else "\n" + line
        parts.append(piece)
        size += len(piece)
        if size > SNIFF_CHARS:
            break
    text = "".join(parts)
    return text[:SNIFF_CHARS], len(text) > SNIFF_CHARS


def depth_violation(text: str, limit: int, start: int = 0) -> int | None:
    """Offset of the first bracket nested deeper than ``limit`` levels, or None.

    Checked before ``json.loads`` so hostile nesting never reaches the recursive parser.
    """
    depth = 0
    for match in _JSON_TOKEN.finditer(text, start):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return match.start()
        elif token in "]}":
            depth -= 1
    return None


def _load_line(line: str, number: int, errors: ErrorSink, max_depth: int) -> tuple[bool, Any]:
    where = depth_violation(line, max_depth)
    if where is not None:
        errors.add(number, "json", f"nested deeper than {max_depth} levels (column {where + 1})")
        return False, None
    try:
        return True, json.loads(line)
    except json.JSONDecodeError as exc:
        errors.add(number, "json", f"invalid JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        errors.add(number, "json", f"invalid JSON: {exc}")
    return False, None


def json_lines(
    text: str | Iterable[str], errors: ErrorSink, *, max_depth: int = MAX_DEPTH
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for each non-blank JSON Lines record (``text``: the text, or
    its lines)."""
    lines = text.split("\n") if isinstance(text, str) else text
    for number, line in enumerate(lines, start=1):
        if errors.full:
            return
        if not line.strip():
            continue
        ok, value = _load_line(line, number, errors, max_depth)
        if ok:
            yield number, value


def json_array(
    text: str, errors: ErrorSink, *, max_depth: int = MAX_DEPTH
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, element)`` for each element of a top-level JSON array.

    Elements are decoded one at a time so each carries the line where it starts.
    """
    where = depth_violation(text, max_depth + 1)  # +1: the array itself
    if where is not None:
        line = text.count("\n", 0, where) + 1
        errors.add(line, "json", f"nested deeper than {max_depth} levels")
        return
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        errors.add(1, "json", "expected a JSON array of objects")
        return
    pos = _skip_ws(text, pos + 1)
    line, seen = 1, 0
    if text.startswith("]", pos):
        _expect_end(text, pos + 1, errors)
        return
    while not errors.full:
        line += text.count("\n", seen, pos)
        seen = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            errors.add(exc.lineno, "json", f"invalid JSON: {exc.msg} (column {exc.colno})")
            return
        except ValueError as exc:
            errors.add(line, "json", f"invalid JSON: {exc}")
            return
        yield line, value
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            _expect_end(text, pos + 1, errors)
            return
        else:
            at = text.count("\n", 0, pos) + 1
            errors.add(at, "json", "expected ',' or ']' between array elements")
            return


def _skip_ws(text: str, pos: int) -> int:
    match = _JSON_WS.match(text, pos)
    return match.end() if match else pos


def _expect_end(text: str, pos: int, errors: ErrorSink) -> None:
    end = _skip_ws(text, pos)
    if end != len(text):
        errors.add(text.count("\n", 0, end) + 1, "json", "unexpected content after the array")


def sniff_delimiter(text: str, preferred: str = ",", *, cut: bool | None = None) -> str:
    """Pick the delimiter under which the header and the first rows agree on a column count.

    Rows are read with the ``csv`` module itself, so quoted fields spanning lines (common in
    CRM exports: descriptions, addresses) do not confuse the guess as ``csv.Sniffer`` can.
    """
    sample = text[:SNIFF_CHARS]
    cut = len(sample) < len(text) if cut is None else cut
    best, best_score = preferred, (False, False, -1, -1)
    for delimiter in (preferred, *(d for d in CSV_DELIMITERS if d != preferred)):
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        try:
            rows = [row for row in itertools.islice(reader, 21) if row]
        except csv.Error:
            continue
        if not rows:
            continue
        body = rows[1:-1] if cut else rows[1:]  # a cut sample ends badly
        width = len(rows[0])
        agree = sum(len(row) == width for row in body)
        score = (width > 1, agree == len(body), agree, width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def csv_rows(
    text: str | Iterable[str], errors: ErrorSink, *, delimiter: str
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(start line, cells)`` for each non-blank CSV record (the header included);
    ``text``: the text, or its lines as :func:`csv_lines` gives them."""
    source = io.StringIO(text, newline="") if isinstance(text, str) else text
    reader = csv.reader(source, delimiter=delimiter, strict=True)
    previous = 0
    while not errors.full:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.add(previous + 1, "csv", f"malformed CSV: {exc}")
            return
        start, previous = previous + 1, reader.line_num
        if row:
            yield start, row


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
