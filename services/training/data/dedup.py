"""Exact and near-duplicate removal, stable (first occurrence wins, order preserved)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array
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


def _digest64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1  # 0 marks an empty slot of a DigestSet


class DigestSet:
    """A set of 64-bit digests in one flat array (open addressing, linear probing): 8 bytes a
    slot, at most 7/8 full, so 9 to 18 bytes a member where a Python ``set`` of 16-byte
    ``bytes`` takes about 100 (a fuller table costs a few more probes, ~1 µs of a row's
    ~300 µs of preparation). Members must be non-zero and already uniformly distributed
    (they are hashes), so the low bits pick the slot."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._slots = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: int) -> bool:
        """Add ``key``; True when it was not there yet."""
        slots, mask = self._slots, self._mask
        i = key & mask
        while True:
            found = slots[i]
            if found == key:
                return False
            if found == 0:
                slots[i] = key
                self._count += 1
                if 8 * self._count > 7 * len(slots):
                    self._grow()
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = 2 * len(old) - 1
        self._count = 0
        for key in old:
            if key:
                self.add(key)


class Deduper:
    """:func:`dedup` one example at a time, keeping only fixed-size digests of what it saw
    (64-bit: two distinct texts collide with odds of about n²/2⁶⁵, 1 in 10⁷ at 10⁶ rows)."""

    def __init__(self) -> None:
        self._exact = DigestSet()
        self._near = DigestSet()
        self.exact_dropped = self.near_dropped = 0

    def keep(self, example: Example) -> bool:
        """True for the first occurrence; counts the drop otherwise."""
        if not self._exact.add(_digest64(content_key(example.map_text(normalize_text)))):
            self.exact_dropped += 1
            return False
        form = content_key(example.map_text(near_form))
        if any(ch.isalpha() for ch in form) and not self._near.add(_digest64(form)):
            self.near_dropped += 1
            return False
        return True

    def report(self) -> DedupReport:
        return DedupReport(exact_dropped=self.exact_dropped, near_dropped=self.near_dropped)
