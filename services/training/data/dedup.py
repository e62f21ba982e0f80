"""Exact and near-duplicate removal, stable (first occurrence wins, order preserved)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from services.training.data.example import Example, content_key
from services.training.data.normalize import normalize_text

_SPACES = re.compile(r"\s+")


class _NearTable(dict[int, str]):
    """``str.translate`` table: punctuation, symbols and digits → space, filled on demand."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        self[code] = value = " " if unicodedata.category(ch)[0] in "PSN" else ch
        return value


_NEAR_TABLE = _NearTable()


@dataclass(frozen=True, slots=True)
class DedupReport:
    """How many examples each pass dropped."""

    exact_dropped: int = 0
    near_dropped: int = 0


def exact_key(example: Example) -> str:
    """Digest of the normalized content (prompt + completion, or every chat turn with its role)."""
    normalized = content_key(example.map_text(normalize_text))
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def near_form(text: str) -> str:
    """``text`` casefolded, without punctuation, symbols or digits, whitespace collapsed: two
    tickets that differ only in an order number or a full stop share this form."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", text.translate(_NEAR_TABLE)).strip()


def near_key(example: Example) -> str | None:
    """Digest of the near form, or None when nothing but digits/punctuation is left (such
    examples are only compared exactly, not all lumped together)."""
    form = content_key(example.map_text(near_form))
    if not any(ch.isalpha() for ch in form):
        return None
    return hashlib.blake2b(form.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def dedup(examples: list[Example]) -> tuple[list[Example], DedupReport]:
    """Drop exact duplicates, then near duplicates, keeping each first occurrence in order."""
    seen_exact: set[str] = set()
    seen_near: set[str] = set()
    kept: list[Example] = []
    exact = near = 0
    for example in examples:
        key = exact_key(example)
        if key in seen_exact:
            exact += 1
            continue
        seen_exact.add(key)
        fuzzy = near_key(example)
        if fuzzy is not None and fuzzy in seen_near:
            near += 1
            continue
        if fuzzy is not None:
            seen_near.add(fuzzy)
        kept.append(example)
    return kept, DedupReport(exact_dropped=exact, near_dropped=near)
