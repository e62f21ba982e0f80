"""PII redaction: emails, IBANs, payment cards, national ids, IP addresses, phone numbers.

Each detector finds spans in the text left by the previous ones and replaces them with a
placeholder (``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[NATIONAL_ID]``, ``[IP]``, ``[PHONE]``).
Order matters: emails go first (their local parts hold digits), then IBANs and cards, so the
phone matcher never gets to split a card number and leave half of it in clear; placeholders
hold no digits, so a later detector cannot pick up their remains.

National ids covered: US SSN and ITIN (``stdnum.us``), German Steuer-IdNr
(``stdnum.de.idnr``), UK National Insurance number (pattern and prefix rules: the installed
python-stdnum has no ``gb.nino``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import phonenumbers
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.us import itin, ssn

Span = tuple[int, int]

PHONE_REGIONS = ("US", "DE")
KINDS = ("email", "iban", "card", "national_id", "ip", "phone")

_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_LOCAL}+@(?:[\w-]+\.)+[\w-]{{2,}}")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){11,32}")
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*")
_DIGITS = re.compile(r"[0-9]+")
_ANY_DIGIT = re.compile(r"\d")  # phonenumbers also reads non-ASCII digits
_SSN = re.compile(r"(?<![0-9-])[0-9]{3}([- ])[0-9]{2}\1[0-9]{4}(?![0-9]|-[0-9])")
_IDNR = re.compile(r"(?<![0-9])[1-9][0-9] ?[0-9]{3} ?[0-9]{3} ?[0-9]{3}(?![0-9])")
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?![A-Za-z0-9])",
    re.IGNORECASE,
)
_IPV4 = re.compile(r"(?<![0-9.])(?<![0-9]\.)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?:%\w+)?(?![\w:])"
)


def _emails(text: str) -> list[Span]:
    if "@" not in text:
        return []
    return [m.span() for m in _EMAIL.finditer(text)]


def _ibans(text: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while match := _IBAN.search(text, pos):
        run = match.group()
        ends = [i + 1 for i, ch in enumerate(run) if ch.isalnum()]
        # The run may have swallowed a following word ("... 0130 00 BIC"): longest valid prefix.
        end = next((e for e in reversed(ends[14:]) if iban.is_valid(run[:e])), None)
        if end is None:
            pos = match.start() + 1
        else:
            spans.append((match.start(), match.start() + end))
            pos = match.start() + end
    return spans


def _cards(text: str) -> list[Span]:
    """Luhn-valid runs of 13-19 digits, in groups split by single spaces or dashes.

    A run may hold more than the card ("ref 12 4111 1111 1111 1111"), so every window of whole
    groups is tried, longest first. A window right after ``+`` is a phone number, not a card.
    """
    spans: list[Span] = []
    for run in _DIGIT_RUN.finditer(text):
        groups = [
            (run.start() + m.start(), run.start() + m.end()) for m in _DIGITS.finditer(run.group())
        ]
        i = 0
        while i < len(groups):
            best = None
            if groups[i][0] == 0 or text[groups[i][0] - 1] != "+":
                count = 0
                for j in range(i, len(groups)):
                    count += groups[j][1] - groups[j][0]
                    if count > 19:
                        break
                    digits = "".join(text[a:b] for a, b in groups[i : j + 1])
                    if count >= 13 and luhn.is_valid(digits):
                        best = j
            if best is None:
                i += 1
            else:
                spans.append((groups[i][0], groups[best][1]))
                i = best + 1
    return spans


def _national_ids(text: str) -> list[Span]:
    spans = [
        m.span()
        for m in _SSN.finditer(text)
        if ssn.is_valid(m.group().replace(" ", "-")) or itin.is_valid(m.group().replace(" ", ""))
    ]
    spans += [m.span() for m in _IDNR.finditer(text) if idnr.is_valid(m.group())]
    spans += [m.span() for m in _NINO.finditer(text)]
    return spans


def _ips(text: str) -> list[Span]:
    spans = []
    for m in _IPV4.finditer(text):
        if all(int(part) <= 255 for part in m.group().split(".")):
            spans.append(m.span())
    for m in _IPV6.finditer(text):
        try:
            address = ipaddress.IPv6Address(m.group())
        except ValueError:
            continue
        if not address.is_unspecified:
            spans.append(m.span())
    return spans


MIN_PHONE_DIGITS = 7
_PHONE_RUN = re.compile(r"\+?\(?\d[\d ().\-/]{5,}\d")
_GAP = re.compile(r" +")


def _match_phones(text: str, offset: int = 0) -> list[Span]:
    spans: list[Span] = []
    for region in PHONE_REGIONS:
        matcher = phonenumbers.PhoneNumberMatcher(text, region)
        spans += [(offset + m.start, offset + m.end) for m in matcher]
    return spans


def _uncovered_digits(start: int, end: int, text: str, spans: list[Span]) -> int:
    return sum(
        text[i].isdigit() and not any(a <= i < b for a, b in spans) for i in range(start, end)
    )


def _split_runs(text: str, spans: list[Span]) -> list[Span]:
    """Numbers the matcher missed because they run into each other ("+1 415 555 0134 01512
    3456000" is one implausible number to it): each such digit run is cut between two of its
    space-separated groups, and the cut whose halves match as phone numbers best is kept."""
    found: list[Span] = []
    for run in _PHONE_RUN.finditer(text):
        if _uncovered_digits(run.start(), run.end(), text, spans) < MIN_PHONE_DIGITS:
            continue
        best: list[Span] = []
        for gap in _GAP.finditer(run.group()):
            cut = run.start() + gap.end()
            halves = _match_phones(text[run.start() : cut], run.start())
            halves += _match_phones(text[cut : run.end()], cut)
            if sum(b - a for a, b in halves) > sum(b - a for a, b in best):
                best = halves
        found += best
    return found


def _phones(text: str) -> list[Span]:
    if len(_ANY_DIGIT.findall(text)) < 3:  # the matcher is the slowest detector by far
        return []
    spans = _match_phones(text)
    return spans + _split_runs(text, spans)


_DETECTORS: tuple[tuple[str, Callable[[str], list[Span]]], ...] = (
    ("email", _emails),
    ("iban", _ibans),
    ("card", _cards),
    ("national_id", _national_ids),
    ("ip", _ips),
    ("phone", _phones),
)


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII in ``text`` with placeholders; return the text and counts by kind (only
    kinds that were found appear)."""
    counts: dict[str, int] = {}
    for kind, find in _DETECTORS:
        spans = _merge(find(text))
        if not spans:
            continue
        placeholder = f"[{kind.upper()}]"
        pieces, pos = [], 0
        for start, end in spans:
            pieces += [text[pos:start], placeholder]
            pos = end
        text = "".join([*pieces, text[pos:]])
        counts[kind] = counts.get(kind, 0) + len(spans)
    return text, counts


def find_pii_kinds(text: str) -> set[str]:
    """The kinds of PII present in ``text`` (names only, never values: for a "block" mode)."""
    return set(redact(text)[1])
